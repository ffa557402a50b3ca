"""The Fashion-MNIST runs behind docs/results.md, with the tuned options applied.

``python -m swgl.bench.suite --tuned permuted.json,split.json --workers 15`` runs every table
(permuted 10 tasks; split task/domain/class-IL; stream-input-permuted) and prints each one.
The tuned JSON files (``KEY=PATH``) are :mod:`swgl.bench.tuning`'s outcome per scenario: the
permuted one supplies the permuted and stream tables, ``split-task`` the split-task table and
so on; methods a file lacks fall back to the permuted one.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from typing import Any

from swgl.bench.config import BenchConfig
from swgl.bench.runner import Results, run

__all__ = ["ALL_METHODS", "TABLES", "run_suite"]

ALL_METHODS = ("naive-sgd", "naive-adam", "naive-adamw", "ewc", "online-ewc", "si", "mas",
               "replay", "agem", "lwf", "upgd", "swgl-sgd", "swgl-adamw", "swgl-replay")
#: table name -> (scenario, tuned-file key, extra config fields)
TABLES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "permuted": ("permuted", "permuted", {"n_tasks": 10}),
    "split-task": ("split-task", "split-task", {}),
    "split-domain": ("split-domain", "split-domain", {}),
    "split-class": ("split-class", "split-class", {}),
    "stream": ("stream-input-permuted", "permuted", {"n_tasks": 10, "stream_steps": 300}),
}


def run_suite(tuned: Mapping[str, Mapping[str, Any]], *, seeds: Sequence[int] = (0, 1, 2),
              data_dir: str | None = None, workers: int = 1, out_dir: str = "runs",
              tables: Sequence[str] = tuple(TABLES)) -> dict[str, Results]:
    """Run ``tables``; ``tuned[key][method]["options"]`` are the chosen options."""
    out = {}
    for name in tables:
        scenario, key, extra = TABLES[name]
        chosen = {**tuned.get("permuted", {}), **tuned.get(key, {})}
        opts = {m: dict(chosen[m]["options"]) for m in ALL_METHODS if m in chosen}
        cfg = BenchConfig(dataset="fashion-mnist", scenarios=(scenario,), methods=ALL_METHODS,
                          seeds=tuple(seeds), data_dir=data_dir, method_opts=opts,
                          evals_per_task=2, **extra)
        out[name] = run(cfg, out_dir=out_dir, resume=True, workers=workers)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    from rich.console import Console

    from swgl.bench.report import summary_table

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tuned", required=True,
                   help="comma-separated KEY=PATH tuning outcomes (keys: permuted, split-*)")
    p.add_argument("--tables", default=",".join(TABLES), help="tables to run")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (default: 3)")
    p.add_argument("--workers", type=int, default=1, help="processes (default: 1)")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST folder")
    p.add_argument("--out-dir", default="runs", help="run folders (default: runs)")
    args = p.parse_args(argv)
    tuned = {}
    for item in args.tuned.split(","):
        key, _, path = item.partition("=")
        with open(path) as f:
            tuned[key] = json.load(f)
    results = run_suite(tuned, seeds=range(args.seeds), data_dir=args.data_dir,
                        workers=args.workers, out_dir=args.out_dir,
                        tables=args.tables.split(","))
    console = Console(width=160)
    for name, res in results.items():
        console.print(summary_table(res.summary, f"{name} ({res.run_id})"))


if __name__ == "__main__":
    main()
