"""Continual LM on real text at GPU size (issue 14), in one command of under 6 minutes.

A ~25M-parameter byte-level transformer (d=512, 8 layers, seq 256, batch 64, bf16
autocast) trains on six Debian text domains (``swgl.bench.text``):

1. ``text-domains``: the learning rates of AdamW, SWGL (default), SWGL with layer-aware
   groups and UPGD are tuned over a small grid on the validation split (seed 0); then every
   method (AdamW, replay, EWC, online EWC, L2-init, UPGD, SWGL, SWGL-groups) runs at its
   chosen lr and is scored on the test split.
2. ``text-drift`` (no boundaries): AdamW, replay, SWGL and SWGL-groups at the lrs chosen in 1.
3. SWGL's training-time overhead: ms per step of AdamW, SWGL (default path: Triton-fused on
   CUDA when Triton is installed, its phases replayed as CUDA graphs), SWGL with
   ``cuda_graphs=False``, with ``fused=False`` (and no graphs) and SWGL-groups, on the same
   model and batches, CUDA-synchronised, median of interleaved repeats
   (``--overhead-only``: this part alone, 5 repeats, into ``text_overhead.json``).

Steps per domain are chosen from a measured step time so the whole run fits ``--budget-s``
(unless ``--steps-per-domain`` is given). Writes ``text_gpu.json`` and the loss-matrix and
per-domain-curve PNGs of both scenarios into ``--out`` (default ``$OUT``, else
``benchmarks/results/text_gpu``), the run folders (cells, ``results.json``) under
``<out>/runs/``, and prints the tables.

A GPU machine without the Debian packages reads a prepared corpus (same splits)::

    python -m swgl.bench.text.prepare runs/text_corpus          # where the packages are
    PYTHONPATH=src python benchmarks/text_domains_gpu.py --data-dir runs/text_corpus   # H200
    python benchmarks/text_domains_gpu.py --device cpu --size tiny --budget-s 60   # smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from swgl.bench.methods import Context
from swgl.bench.text import bench, report
from swgl.bench.text.config import DEFAULT_METHODS, TextConfig
from swgl.bench.text.corpora import load_domain
from swgl.bench.text.methods import build_method, text_spec, tuned_grid
from swgl.bench.text.model import VOCAB, ByteTransformer
from swgl.bench.text.stream import sample_windows
from swgl.bench.text.train import autocast, sync

DRIFT_METHODS = ("naive-adamw", "replay", "swgl-adamw", "swgl-adamw-groups")
#: overhead variants: label -> (text method, extra SWGL options)
OVERHEAD = {
    "adamw": ("naive-adamw", {}),
    "swgl (default)": ("swgl-adamw", {}),
    "swgl cuda_graphs=False": ("swgl-adamw", {"swgl.cuda_graphs": False}),
    "swgl fused=False": ("swgl-adamw", {"swgl.fused": False, "swgl.cuda_graphs": False}),
    "swgl-groups": ("swgl-adamw-groups", {}),
}


def step_times(cfg: TextConfig, steps: int, repeats: int) -> dict[str, float]:
    """Median ms per training step of each :data:`OVERHEAD` variant (same model, same data)."""
    r = cfg.resolved()
    device = torch.device(r.device)
    data = load_domain(r.domains[0], r.data_dir, r.max_bytes).train.to(device)
    gen = torch.Generator().manual_seed(0)
    batches = [sample_windows(data, r.batch_size, r.seq_len, gen) for _ in range(8)]
    tids = torch.zeros(r.batch_size, dtype=torch.long, device=device)
    runners = {}
    for label, (name, extra) in OVERHEAD.items():
        torch.manual_seed(0)
        model = ByteTransformer(cfg.model_size()).to(device)
        opts = {**cfg.method_opts.get(name, {}), **extra}
        spec = text_spec(name, replace(cfg, methods=(name,), method_opts={name: opts}))
        runners[label] = build_method(spec, model, Context(VOCAB, r.batch_size), r.lr)
    times: dict[str, list[float]] = {label: [] for label in runners}

    def run(method, n: int) -> float:
        sync(device)
        start = time.perf_counter()
        for i in range(n):
            w = batches[i % len(batches)]
            with autocast(device):
                method.observe(w[:, :-1], w[:, 1:], tids)
        sync(device)
        return 1000.0 * (time.perf_counter() - start) / n

    for method in runners.values():
        run(method, max(3, steps // 4))  # warm-up: kernels, state, autotuning
    for _ in range(repeats):
        for label, method in runners.items():
            times[label].append(run(method, steps))
    return {label: statistics.median(v) for label, v in times.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="gpu", help="text size preset (default: gpu)")
    p.add_argument("--device", default="cuda", help="torch device (default: cuda)")
    p.add_argument("--budget-s", type=float, default=290.0,
                   help="seconds for the training cells, used to pick steps per domain "
                   "(default: 290, so the whole command stays under 6 minutes)")
    p.add_argument("--steps-per-domain", type=int, default=None,
                   help="fix the steps per domain instead of fitting the budget")
    p.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default: 0)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                   choices=DEFAULT_METHODS, metavar="METHOD",
                   help="methods of part 1, naive-adamw among them (default: all); part 2 "
                   f"runs those of {', '.join(DRIFT_METHODS)} that are among them")
    p.add_argument("--data-dir", default=None, help="root of the corpora (default: /)")
    p.add_argument("--overhead-only", action="store_true",
                   help="measure the training-time overhead (part 3) alone and stop")
    p.add_argument("--out", default=None,
                   help="output folder (default: $OUT, else benchmarks/results/text_gpu)")
    args = p.parse_args(argv)
    if "naive-adamw" not in args.methods:
        p.error("--methods must include naive-adamw: every figure is measured against it")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    log = logging.getLogger("text_gpu")
    out = Path(args.out or os.environ.get("OUT") or "benchmarks/results/text_gpu")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    else:
        torch.set_num_threads(1)  # small models on a shared CPU: one thread is fastest
    methods = tuple(args.methods)
    drift_methods = tuple(m for m in DRIFT_METHODS if m in methods)
    base = TextConfig(scenarios=("text-domains",), methods=methods,
                      seeds=tuple(args.seeds), size=args.size, device=args.device,
                      data_dir=args.data_dir, evals_per_domain=2)

    overhead = step_times(base, steps=30, repeats=5 if args.overhead_only else 3)
    log.info("ms/step: %s", overhead)
    if args.overhead_only:
        ref = overhead["adamw"]
        result = {"step_ms": overhead,
                  "overhead_vs_adamw": {k: v / ref - 1.0 for k, v in overhead.items()}}
        (out / "text_overhead.json").write_text(json.dumps(result, indent=2))
        for label, ms in overhead.items():
            print(f"{label:<24} {ms:8.2f} ms/step  {100 * (ms / ref - 1):+6.1f}%")
        return
    steps = args.steps_per_domain
    if steps is None:
        r = base.resolved()
        n_tune = sum(len(tuned_grid(m, base)) for m in methods)
        n_cells = n_tune + (len(methods) + len(drift_methods)) * len(args.seeds)
        # 1.6: evaluation, EWC's Fisher, replay's doubled batch, model set-up per cell
        per_step = 1.6 * max(overhead.values()) / 1000.0
        steps = int(args.budget_s / (n_cells * len(r.domains) * per_step))
        steps = max(20, min(steps, 600))
        log.info("%d cells: %d steps per domain fit the %.0f s budget", n_cells, steps,
                 args.budget_s)
    cfg = replace(base, steps_per_domain=steps)
    dom = bench.run(cfg, out_dir=out / "runs")
    log.info("text-domains done at %.0f s", time.perf_counter() - t0)
    chosen = dom.chosen_lr["text-domains"]
    drift_cfg = replace(cfg, scenarios=("text-drift",), methods=drift_methods,
                        method_opts={m: {"lr": chosen[m]} for m in drift_methods})
    drift = bench.run(drift_cfg, out_dir=out / "runs")
    elapsed = time.perf_counter() - t0
    log.info("text-drift done at %.0f s", elapsed)

    ref = overhead["adamw"]
    goals = {s: {m: bench.compare(res.summary, s, m)
                 for m in ("swgl-adamw", "swgl-adamw-groups") if m in methods}
             for s, res in (("text-domains", dom), ("text-drift", drift))}
    result = {
        "config": cfg.resolved().to_dict(),
        "n_params": dom.cells[0]["n_params"],
        "device": torch.cuda.get_device_name() if cfg.device.startswith("cuda") else cfg.device,
        "torch": torch.__version__,
        "chosen_lr": chosen,
        "tuning": dom.tuning,
        "summary": dom.summary + drift.summary,
        "goals_vs_adamw": goals,
        "step_ms": overhead,
        "overhead_vs_adamw": {k: v / ref - 1.0 for k, v in overhead.items()},
        "wall_s": elapsed,
        "runs": [str(dom.run_dir), str(drift.run_dir)],
    }
    (out / "text_gpu.json").write_text(json.dumps(result, indent=2))
    for res in (dom, drift):
        report.write_all(res, plots=False)  # results.json: `swgl plot` redraws anywhere
        try:
            report.write_plots(report.results_dict(res), out)
        except ImportError as exc:
            log.warning("no plots (%s); redraw with `swgl plot %s --out %s`", exc, res.run_dir,
                        out)

    r = cfg.resolved()
    lines = [f"{result['n_params'] / 1e6:.1f}M params, {r.steps_per_domain} steps/domain x "
             f"{len(r.domains)} domains, batch {r.batch_size} x {r.seq_len} bytes: test loss "
             "(nats/byte), mean ± std over seeds"]
    for row in dom.summary + drift.summary:
        lines.append(f"{row['scenario']:>12} {row['method']:>18} lr {row['lr']:<7g} final "
                     f"{row['final_loss_mean']:.4f} ± {row['final_loss_std']:.4f}  forgetting "
                     f"{row['forgetting_mean']:.4f} ± {row['forgetting_std']:.4f}  learning "
                     f"{row['learning_loss_mean']:.4f} ± {row['learning_loss_std']:.4f}")
    for label, ms in overhead.items():
        lines.append(f"{label:>24}: {ms:7.2f} ms/step ({100 * (ms / ref - 1):+.1f}% vs AdamW)")
    for s, per in goals.items():
        for m, g in per.items():
            lines.append(f"{s} {m}: forgetting {g['forgetting_delta']:+.4f} vs AdamW, "
                         f"learning loss {100 * g['learning_gap']:+.2f}%, "
                         f"final {100 * g['final_gap']:+.2f}%")
    lines.append(f"wall {elapsed:.0f} s; results in {out}")
    print("\n".join(lines))  # noqa: T201 (a script's output)


if __name__ == "__main__":
    main()
