"""Which task boundaries the shift detector (v5's and v6's) finds (issue 12, ninth session).

Runs SWGL (``--rule``, the library's default unless given) through ``earn_its_place.py``'s
harness (one scenario, optimizer, lr and seed) and records, at every step, the detector's
ratio ``f_hat / q_hat`` for the whole group (what it thresholds at ``SHIFT_RATIO``) and for
each tensor alone, and the steps it fired at. Prints, per true boundary, whether a shift was
detected within 40 steps and the largest ratios there; and the ratios' spread inside tasks
(steps 45 and more past a boundary, after the first task). ``--oracle`` also runs the harness's
oracle (the shift forced ``--oracle-step`` steps into each task, 0 its first) and reports its
final validation ACC beside the detector's own.

    FMNIST_DIR=... python benchmarks/detector_recall.py rotated adam 1e-4 --json out.json
    FMNIST_DIR=... python benchmarks/detector_recall.py rotated adam 1e-4 --oracle --seeds 0 1

Read-only instrumentation: for the run it wraps the detector's step (the harness's
``earn_its_place.ADVANCE``, :func:`swgl.rules.consolidation._advance`, which every CPU path
calls) and the rule's ``before`` phase, to see the step's grads. (The ninth session's figures
are v5's, the default then, with its oracle at the third step of a task.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import earn_its_place as eip  # noqa: E402

from swgl.rules import DEFAULT_RULE, RULES, Variants, consolidation  # noqa: E402

WINDOW = 40      # steps after a boundary in which a detection counts
SETTLED = 45     # steps after a boundary from which a step counts as inside the task


def _ratio(f: torch.Tensor, q: torch.Tensor, t: int) -> torch.Tensor:
    return (f / (1.0 - consolidation.B_FAST ** t)) / (q / (1.0 - consolidation.B_SLOW ** t))


def run(scenario: str, opt: str, lr: float, seed: int, rule_name: str,
        oracle_step: int | None = None) -> dict:
    """One run; returns its per-step trace, the detector's own shifts and the final
    validation ACC (with ``oracle_step``, the harness's oracle overrides the shifts)."""
    cfg = eip.SCENARIOS[scenario]
    per_task = (cfg["n"] // 64) * cfg["epochs"]
    trace: list[tuple[int, float, list[float]]] = []
    fired: list[int] = []
    per_tensor = {"f": None, "q": None}
    original, rule = eip.ADVANCE, RULES[rule_name]
    seen = {}

    def stash(before):
        def call(params, grads, *rest):
            seen["grads"] = grads      # the detector (called within) reads only their sum
            return before(params, grads, *rest)
        return call

    def probed(n, det, found, kernel):
        new, shift = original(n, det, found, kernel)
        t = int(new[0])
        norms = torch.stack([g.detach().float().square().sum() for g in seen["grads"]])
        f = per_tensor["f"] if per_tensor["f"] is not None else torch.zeros_like(norms)
        q = per_tensor["q"] if per_tensor["q"] is not None else torch.zeros_like(norms)
        per_tensor["f"] = f + (1.0 - consolidation.B_FAST) * (norms - f)
        per_tensor["q"] = q + (1.0 - consolidation.B_SLOW) * (norms - q)
        trace.append((t, float(_ratio(new[1], new[2], t)),
                      _ratio(per_tensor["f"], per_tensor["q"], t).tolist()))
        if bool(shift):
            fired.append(t)
        return new, shift

    # run_one installs eip.ADVANCE (or the oracle, which calls it) as the detector's step
    eip.ADVANCE = probed
    RULES[rule_name] = dataclasses.replace(rule, before=Variants(
        *(stash(f) for f in (rule.before.single, rule.before.foreach, rule.before.fused))))
    extra = {} if oracle_step is None else {"oracle": oracle_step}
    try:
        result = eip.run_one(dict(seed=seed, batch=64, hidden=256, opt=opt,
                                  scenario_name=scenario, **cfg, lr=lr, method="swgl",
                                  swgl={"rule": rule_name}, **extra))
    finally:
        eip.ADVANCE, RULES[rule_name] = original, rule
    return {"per_task": per_task, "tasks": cfg["tasks"], "trace": trace, "fired": fired,
            "val_acc": 100.0 * float(np.asarray(result["val"])[-1].mean())}


def summary(out: dict) -> dict:
    """Per boundary: detected or not, the largest group and per-tensor ratios; inside tasks:
    the ratios' 95th percentile and maximum."""
    per, trace = out["per_task"], out["trace"]
    boundaries = []
    for k in range(1, out["tasks"]):
        b = k * per
        near = [x for x in trace if b - 2 <= x[0] <= b + WINDOW]
        boundaries.append({
            "step": b,
            "detected": any(b - 2 <= s <= b + WINDOW for s in out["fired"]),
            "group_max": max(x[1] for x in near),
            "tensor_max": [max(x[2][i] for x in near) for i in range(len(near[0][2]))],
        })
    inside = [x for x in trace if x[0] > per and x[0] % per > SETTLED]
    groups = sorted(x[1] for x in inside)
    tensors = [sorted(x[2][i] for x in inside) for i in range(len(inside[0][2]))]

    def spread(xs):
        return {"p95": xs[int(0.95 * (len(xs) - 1))], "max": xs[-1]}

    return {"boundaries": boundaries, "inside_group": spread(groups),
            "inside_tensor": [spread(xs) for xs in tensors], "fired": out["fired"],
            "val_acc": out["val_acc"]}


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"lr must be > 0, got {text}")
    return value


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=sorted(eip.SCENARIOS),
                   help="an earn_its_place.py scenario")
    p.add_argument("opt", choices=("sgd", "adam"))
    p.add_argument("lr", type=_positive)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--rule", default=DEFAULT_RULE, choices=("v5", "v6"),
                   help="the rule whose detector runs (default: the library's default)")
    p.add_argument("--oracle", action="store_true",
                   help="also run with the shift forced at each true boundary; compare the "
                        "final val ACC")
    p.add_argument("--oracle-step", type=int, default=0,
                   help="the step of each new task at which the oracle fires (0: its first)")
    p.add_argument("--json", help="write the summaries to this file")
    args = p.parse_args(argv)
    rows = []
    for seed in args.seeds:
        own = summary(run(args.scenario, args.opt, args.lr, seed, args.rule))
        row = {"seed": seed, **own}
        if args.oracle:
            row["oracle_val_acc"] = run(args.scenario, args.opt, args.lr, seed, args.rule,
                                        args.oracle_step)["val_acc"]
        rows.append(row)
        lines = [f"{args.scenario} {args.opt} lr {args.lr:g} seed {seed}: detector fired at "
                 f"{own['fired']}; val ACC {own['val_acc']:.1f}"
                 + (f", with the oracle's shifts {row['oracle_val_acc']:.1f}"
                    if args.oracle else "")]
        for b in own["boundaries"]:
            lines.append(f"  boundary {b['step']:>5}: {'found' if b['detected'] else 'missed'}, "
                         f"group ratio {b['group_max']:.2f}, per tensor "
                         + " ".join(f"{v:.2f}" for v in b["tensor_max"]))
        lines.append(f"  inside tasks: group p95 {own['inside_group']['p95']:.2f} max "
                     f"{own['inside_group']['max']:.2f}; per tensor max "
                     + " ".join(f"{s['max']:.2f}" for s in own["inside_tensor"]))
        print("\n".join(lines))  # noqa: T201 (a script's output)
    if len(rows) > 1 and args.oracle:
        print(f"mean val ACC: detector {statistics.mean(r['val_acc'] for r in rows):.2f}, "  # noqa: T201
              f"oracle {statistics.mean(r['oracle_val_acc'] for r in rows):.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
