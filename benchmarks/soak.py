"""Soak test: SWGL over a long stream, watching memory, the state and the scale for drift.

A small MLP (64-32-32-10) trains online on the ``stream-input-permuted`` scenario of the
embedded digits dataset (a new pixel permutation every ``--segment`` steps, no task
boundaries), batch size ``--batch``, with ``SWGL.wrap(SGD)`` at the library's defaults
(rule v3 today) plus any ``--swgl-opts``; the JSON records the resolved options. Every
``--every`` steps it records

* ``rss_mb``: the process's resident memory (VmRSS);
* the stability as the rule reads it (bias-corrected for v2/v3), over all params: ``finite``,
  ``s_min``, ``s_max``, ``s_median`` and ``zero_frac`` (elements exactly 0);
* the scale ``c`` each element gets (recomputed from the state with
  :data:`swgl.stats.SCALES`): ``c_min``, ``c_max``, ``c_mean``;
* ``online_acc``: accuracy on the incoming batches of the last window, before each update.

Pass criteria (``ok`` in the JSON): RSS after the first window grows by less than
``--rss-slack-mb``, the state is finite at every checkpoint, its maximum stays below v2's
ceiling ``R_MAX`` (v2/v3), every per-tensor median stays above 0 (no tensor collapses), and
every factor stays within the rule's range (v2 ``[1/max_damping, max_boost]``, v3
``[1/max_damping, 1]``).

Usage: ``python benchmarks/soak.py [--steps 100000] [--every 5000] [--storage fp32]``; prints
a table and writes ``benchmarks/soak.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from swgl import SWGL
from swgl.bench.data import load_dataset
from swgl.bench.models import build_model
from swgl.bench.scenarios import ScenarioOptions, build_scenario
from swgl.cli import parse_options
from swgl.rules import Hyper
from swgl.rules.normalised import R_MAX
from swgl.stats import SCALES

#: The largest factor of each rule (v1-paper's 1/s is unbounded: its check is vacuous).
FACTOR_CEILING = {"v3": lambda hp: 1.0, "v1-paper": lambda hp: float("inf")}


def rss_mb() -> float:
    """Current resident set size in MiB (VmRSS; the peak from getrusage off Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _hyper(group: dict, prefix: str) -> Hyper:
    return Hyper(**{k: group[prefix + k] for k in (
        "alpha", "lambda_reg", "eps", "max_boost", "signal", "max_damping", "mode", "shock")})


@torch.no_grad()
def state_summary(opt) -> dict[str, float]:
    """Stability and scale over every param with state, as the rule reads them."""
    s_all, c_all, medians = [], [], []
    for group in opt.param_groups:
        hp = _hyper(group, opt.option_prefix)
        scale = SCALES[group[opt.option_prefix + "rule"]]
        for p in group["params"]:
            if "step" not in opt.state.get(p, {}):
                continue
            s, c = scale(opt.stability(p), int(opt.state[p]["step"]), hp)
            s_all.append(s.flatten())
            c_all.append(c.flatten())
            medians.append(float(s.median()))
    s, c = torch.cat(s_all), torch.cat(c_all)
    return {
        "finite": bool(torch.isfinite(s).all() and torch.isfinite(c).all()),
        "s_min": float(s.min()), "s_max": float(s.max()), "s_median": float(s.median()),
        "min_tensor_median": min(medians), "zero_frac": float((s == 0).float().mean()),
        "c_min": float(c.min()), "c_max": float(c.max()), "c_mean": float(c.mean()),
    }


def soak(steps: int, every: int, segment: int, batch: int, lr: float, swgl_opts: dict,
         seed: int) -> tuple[list[dict], dict]:
    data = load_dataset("digits", None)
    n_segments = -(-steps // segment)
    scen = build_scenario("stream-input-permuted", data, n_segments, np.random.default_rng(seed),
                          ScenarioOptions(stream_steps=segment, stream_batch=batch), n_segments)
    torch.manual_seed(seed)
    model = build_model("mlp", tuple(scen.x_train.shape[1:]), scen.n_outputs, 32)
    opt = SWGL.wrap(torch.optim.SGD(model.parameters(), lr=lr), **swgl_opts)
    group = opt.param_groups[0]
    resolved = {k[len("swgl_"):]: v for k, v in group.items() if k.startswith("swgl_")}
    hp = _hyper(group, opt.option_prefix)
    bounds = (hp.min_scale, FACTOR_CEILING.get(resolved["rule"], lambda h: h.max_boost)(hp))
    rows, correct, losses = [], [], []
    rss0, start, step = rss_mb(), time.perf_counter(), 0
    for t, task in enumerate(scen.tasks):
        for i in range(segment):
            if step == steps:
                break
            x, y = scen.train_batch(t, task.train_idx[i * batch:(i + 1) * batch])
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            correct.append(float((logits.argmax(1) == y).float().mean()))
            losses.append(float(loss.detach()))
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % every == 0:
                row = {"step": step, "rss_mb": rss_mb(), **state_summary(opt),
                       "online_acc": float(np.mean(correct)), "loss": float(np.mean(losses)),
                       "elapsed_s": time.perf_counter() - start}
                correct.clear()
                losses.clear()
                rows.append(row)
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                               for k, v in row.items()), flush=True)  # noqa: T201
    info = {"options": resolved, "rss_start_mb": rss0, "factor_bounds": bounds, "steps": step,
            "us_per_step": 1e6 * (time.perf_counter() - start) / max(step, 1)}
    return rows, info


def verdict(rows: list[dict], info: dict, rss_slack_mb: float) -> dict[str, bool]:
    low, high = info["factor_bounds"]
    growth = rows[-1]["rss_mb"] - rows[0]["rss_mb"]
    return {
        "memory_flat": growth < rss_slack_mb,
        "state_finite": all(r["finite"] for r in rows),
        "state_below_r_max": all(r["s_max"] <= R_MAX for r in rows)
        or info["options"]["rule"] in ("v1", "v1-paper"),  # the seed's EMA is unbounded
        "no_tensor_collapses_to_0": all(r["min_tensor_median"] > 0 for r in rows),
        "factor_in_bounds": all(low * (1 - 1e-6) <= r["c_min"] and r["c_max"] <= high * (1 + 1e-6)
                                for r in rows),
    }


def table(rows: list[dict]) -> str:
    cols = ("step", "rss_mb", "s_min", "s_median", "s_max", "min_tensor_median", "zero_frac",
            "c_min", "c_mean", "c_max", "online_acc")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(
            f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--every", type=int, default=5_000, help="steps between checkpoints")
    p.add_argument("--segment", type=int, default=5_000, help="steps per stream segment")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--swgl-opts", default="", help="SWGL options, e.g. storage=bf16,rule=v2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rss-slack-mb", type=float, default=20.0,
                   help="allowed RSS growth from the first checkpoint to the last")
    p.add_argument("--out", default=str(Path(__file__).with_name("soak.json")))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    opts = parse_options(args.swgl_opts, "--swgl-opts")
    rows, info = soak(args.steps, args.every, args.segment, args.batch, args.lr, opts, args.seed)
    ok = verdict(rows, info, args.rss_slack_mb)
    print(table(rows))  # noqa: T201
    print(json.dumps({"ok": ok, **info}, indent=1))  # noqa: T201
    out = {
        "command": "python benchmarks/soak.py " + " ".join(argv if argv is not None else
                                                           __import__("sys").argv[1:]),
        "date": datetime.date.today().isoformat(), "machine": platform.platform(),
        "torch": torch.__version__, "swgl_opts": opts, "batch": args.batch,
        "segment": args.segment, "ok": ok, **info, "rows": rows,
    }
    tmp = Path(args.out).with_suffix(".json.tmp")
    tmp.write_text(json.dumps(out, indent=1))
    tmp.replace(args.out)


if __name__ == "__main__":
    main()
