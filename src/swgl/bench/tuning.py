"""The documented tuning grid: each method's options are chosen on a validation split.

``python -m swgl.bench.tuning --dataset fashion-mnist --scenario permuted`` runs every grid
point on ``eval_split="val"`` (a fixed 1/6 of the training set; the test set is never seen)
and prints the best options per method by final ACC. docs/results.md records the outcome.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from swgl.bench.config import BenchConfig
from swgl.bench.runner import run

__all__ = ["GRID", "tune"]

log = logging.getLogger(__name__)

#: ACC differences below this are ties, broken by learning accuracy.
TIE = 0.005
#: method -> option dicts tried (lr for the optimizer, then the strategy's main strength).
GRID: dict[str, list[dict[str, Any]]] = {
    "naive-sgd": [{"lr": lr} for lr in (0.03, 0.1, 0.3)],
    "naive-adamw": [{"lr": lr} for lr in (3e-4, 1e-3, 3e-3)],
    "naive-adam": [{"lr": lr} for lr in (3e-4, 1e-3)],
    "ewc": [{"lam": lam} for lam in (1e2, 1e3, 1e4, 1e5)],
    "online-ewc": [{"lam": lam} for lam in (1e2, 1e3, 1e4, 1e5)],
    "si": [{"c": c} for c in (0.1, 1.0, 10.0, 100.0)],
    "mas": [{"lam": lam} for lam in (0.1, 1.0, 10.0, 100.0)],
    "lwf": [{"alpha": a} for a in (0.3, 1.0, 3.0)],
    "agem": [{"lr": lr} for lr in (0.03, 0.1)],
    "replay": [{"lr": lr} for lr in (0.03, 0.1)],
    "upgd": [{"lr": lr, "sigma": s} for lr in (0.03, 0.1) for s in (1e-3, 1e-2)],
    "swgl-sgd": [{"lr": lr} for lr in (0.03, 0.1, 0.3, 1.0)],
    "swgl-adamw": [{"lr": lr} for lr in (3e-4, 1e-3, 3e-3)],
    "swgl-replay": [{"lr": lr} for lr in (0.03, 0.1, 0.3)],
}


def tune(base: BenchConfig, grid: Mapping[str, Sequence[Mapping[str, Any]]] = GRID,
         out_dir: str = "runs/tuning", workers: int = 1) -> dict[str, dict[str, Any]]:
    """Run ``grid`` on ``base`` with ``eval_split="val"``; return the best options per method.

    Every grid point is one variant method (``<method>@<i>``) of a single run, so all points
    run in parallel across ``workers`` processes.
    """
    variants, points_of = {}, {}
    for method, points in grid.items():
        for i, opts in enumerate(points):
            name = f"{method}@{i}"
            variants[name] = {"base": method, **opts}
            points_of[name] = (method, dict(opts))
    cfg = replace(base, methods=tuple(variants), variants=variants, eval_split="val")
    res = run(cfg, out_dir=out_dir, resume=True, write_reports=False, workers=workers)
    by_method: dict[str, list[tuple[float, float, dict[str, Any]]]] = {}
    for name in variants:
        rows = [r for r in res.summary if r["method"] == name]
        acc = sum(r["acc_mean"] for r in rows) / len(rows)
        la = sum(r["learning_acc_mean"] for r in rows) / len(rows)
        method, opts = points_of[name]
        by_method.setdefault(method, []).append((acc, la, opts))
        log.info("%s %s: val ACC %.4f, LA %.4f", method, opts, acc, la)
    best: dict[str, dict[str, Any]] = {}
    for method, scores in by_method.items():
        # Best ACC; within TIE of it (e.g. every class-IL point near 1/#classes), the one
        # that learns each task best.
        top = max(s[0] for s in scores)
        acc, _, opts = max((s for s in scores if s[0] >= top - TIE), key=lambda s: s[1])
        best[method] = {"options": opts, "val_acc": acc,
                        "all": [{"options": o, "val_acc": a, "val_la": la} for a, la, o in scores]}
    return best


def main(argv: Sequence[str] | None = None) -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="fashion-mnist", help="dataset (default: fashion-mnist)")
    p.add_argument("--scenario", default="permuted", help="scenario(s), comma-separated")
    p.add_argument("--tasks", type=int, default=5, help="tasks (default: 5)")
    p.add_argument("--train-per-task", type=int, default=1000, help="(default: 1000)")
    p.add_argument("--epochs", type=int, default=1, help="epochs per task (default: 1)")
    p.add_argument("--methods", default=",".join(GRID), help="methods to tune, comma-separated")
    p.add_argument("--workers", type=int, default=1, help="processes (default: 1)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the dataset's)")
    p.add_argument("--out", default=None, help="write the JSON outcome here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    base = BenchConfig(dataset=args.dataset, scenarios=tuple(args.scenario.split(",")),
                       seeds=(0,), n_tasks=args.tasks, train_per_task=args.train_per_task,
                       epochs=args.epochs, data_dir=args.data_dir)
    best = tune(base, {m: GRID[m] for m in args.methods.split(",")}, workers=args.workers)
    text = json.dumps(best, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        print(text)  # noqa: T201 (a script's output)


if __name__ == "__main__":
    main()
