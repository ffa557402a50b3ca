"""What v6's shift detector finds in the default bench's digits tasks (issue 12, sixteenth
session): per task length, method and seed, the steps taken, the step of the last shift
(``shifts()``) and the number of shifts, read as the group's mean consolidated importance
(each of v6's shifts adds a term of mean exactly 1 to it).

    python benchmarks/bench_shifts.py --epochs 3 10 --json out.json

Runs ``swgl.bench.runner.run_cell`` (the bench's own cell) on permuted digits at the lrs the
default bench tunes for SWGL (SGD 0.3, AdamW 1e-3), with v6's defaults. Read-only
instrumentation: it wraps ``runner._shifted``, which reads the optimizer at the end of the
cell, to read it there too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from swgl.bench import runner
from swgl.bench.config import BenchConfig

LRS = {"swgl-sgd": 0.3, "swgl-adamw": 1e-3}


def _reader(out: dict):
    """``runner._shifted`` that also keeps the detector's report and the shift count."""
    shifted = runner._shifted

    def read(method):
        opt = method.optimizer
        F = [opt.state[p]["consolidated"] for g in opt.param_groups for p in g["params"]
             if "consolidated" in opt.state.get(p, {})]
        out["shifts"] = opt.shifts()
        out["count"] = sum(float(f.sum()) for f in F) / sum(f.numel() for f in F)
        return shifted(method)
    return read


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, nargs="+", default=[3, 10])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    out: dict = {}
    runner._shifted = _reader(out)
    rows = []
    print("| epochs | method | seed | steps | last shift | shifts |")
    print("|---|---|---|---|---|---|")
    for epochs in args.epochs:
        for method, lr in LRS.items():
            for seed in args.seeds:
                cfg = BenchConfig(dataset="digits", scenarios=("permuted",), methods=(method,),
                                  seeds=(seed,), epochs=epochs,
                                  method_opts={method: {"lr": lr}})
                cell = runner.run_cell(cfg, "permuted", method, seed)
                group = out["shifts"][0]
                rows.append({"epochs": epochs, "method": method, "seed": seed,
                             "steps": cell["steps"], "last_shift": group["last_shift"],
                             "shifts": round(out["count"], 2)})
                print(f"| {epochs} | {method} | {seed} | {cell['steps']} | "
                      f"{group['last_shift']} | {out['count']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
