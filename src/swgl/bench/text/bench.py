"""Run the text benchmark: tune learning rates on validation, then every cell on test.

1. For each scenario, every method with a grid (:func:`~swgl.bench.text.methods.tuned_grid`)
   trains at each grid lr with the first seed and is scored on the *validation* split by
   final mean loss; ties within :data:`TIE` go to the lower learning loss. Methods without a
   grid take AdamW's chosen lr (or their pinned ``lr``).
2. Every (scenario, method, seed) cell trains at its chosen lr and is scored on
   ``eval_split`` (test by default).

Each finished cell is written atomically to ``<out_dir>/<run-id>/cells/`` and reused with
``resume=True``; :mod:`swgl.bench.text.report` writes the report files next to them.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from swgl.bench.methods import OPTIMIZERS
from swgl.bench.results import atomic_write_text, compute_cells
from swgl.bench.text.config import TextConfig
from swgl.bench.text.methods import text_spec, tuned_grid
from swgl.bench.text.metrics import relative_gap
from swgl.bench.text.train import run_cell

__all__ = ["SUMMARY_METRICS", "TIE", "TextResults", "compare", "run", "summarize"]

log = logging.getLogger(__name__)

#: relative final-loss differences below this are ties (broken by learning loss)
TIE = 0.002
SUMMARY_METRICS = ("final_loss", "forgetting", "learning_loss", "time_per_step_ms")

Cell = tuple[str, str, int, float, str]  # scenario, method, seed, lr, split


@dataclass
class TextResults:
    config: TextConfig
    run_id: str
    run_dir: Path
    chosen_lr: dict[str, dict[str, float]]        # scenario -> method -> lr
    tuning: list[dict[str, Any]]                  # every tuning cell's summary
    cells: list[dict[str, Any]]
    summary: list[dict[str, Any]]


def _name(cell: Cell) -> str:
    scenario, method, seed, lr, split = cell
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{split}__{scenario}__{method}__seed{seed}__lr{lr:g}")


def _default_lr(cfg: TextConfig, method: str) -> float:
    spec = text_spec(method, cfg)
    if "lr" in spec.options:
        return float(spec.options["lr"])
    return OPTIMIZERS["upgd"].lr if spec.optimizer == "upgd" else float(cfg.resolved().lr)


def summarize(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and (population) std over seeds of every metric, per (scenario, method)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for c in cells:
        groups.setdefault((c["scenario"], c["method"]), []).append(c)
    rows = []
    for (scenario, method), group in groups.items():
        row: dict[str, Any] = {"scenario": scenario, "method": method, "n_seeds": len(group),
                               "lr": group[0]["lr"]}
        for m in SUMMARY_METRICS:
            values = [c["metrics"][m] for c in group]
            row[f"{m}_mean"] = float(np.mean(values))
            row[f"{m}_std"] = float(np.std(values))
        rows.append(row)
    return rows


def compare(summary: list[dict[str, Any]], scenario: str, method: str,
            reference: str = "naive-adamw") -> dict[str, float]:
    """``method`` against ``reference`` (mean over seeds): the issue's two goals.

    ``forgetting_delta`` < 0 means ``method`` forgets less; ``learning_gap`` is the relative
    gap of learning loss (0.01 = 1% worse than ``reference``).
    """
    rows = {r["method"]: r for r in summary if r["scenario"] == scenario}
    for name in (method, reference):
        if name not in rows:
            raise ValueError(f"no {name!r} row for scenario {scenario!r} in the summary")
    a, b = rows[method], rows[reference]
    return {
        "forgetting_delta": a["forgetting_mean"] - b["forgetting_mean"],
        "learning_gap": relative_gap(a["learning_loss_mean"], b["learning_loss_mean"]),
        "final_gap": relative_gap(a["final_loss_mean"], b["final_loss_mean"]),
    }


def _best(records: list[dict[str, Any]]) -> dict[str, Any]:
    top = min(r["metrics"]["final_loss"] for r in records)
    close = [r for r in records if r["metrics"]["final_loss"] <= top * (1 + TIE)]
    return min(close, key=lambda r: r["metrics"]["learning_loss"])


def run(config: TextConfig, *, out_dir: str | Path = "runs", resume: bool = False,
        on_cell: Callable[[dict[str, Any], bool], None] | None = None,
        workers: int = 1) -> TextResults:
    """Tune, then run every cell of ``config``; write ``<out_dir>/<run-id>/``."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    cfg = config.resolved()
    run_id = config.run_id()
    run_dir = Path(out_dir) / run_id
    atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2))
    done: dict[Cell, dict[str, Any]] = {}

    def compute(keys: list[Cell]) -> None:
        pending = []
        for key in keys:
            path = run_dir / "cells" / f"{_name(key)}.json"
            if resume and path.is_file():
                try:
                    cell = json.loads(path.read_text())
                except ValueError:
                    log.warning("ignoring unreadable cell file %s", path)
                else:
                    if cell.get("run_id") == run_id:
                        done[key] = cell
                        if on_cell is not None:
                            on_cell(cell, True)
                        continue
            pending.append(key)

        def finish(key: Cell, record: dict[str, Any]) -> None:
            cell = {"run_id": run_id, **record}
            atomic_write_text(run_dir / "cells" / f"{_name(key)}.json", json.dumps(cell))
            done[key] = cell
            if on_cell is not None:
                on_cell(cell, False)

        compute_cells(run_cell, (cfg,), pending, finish, workers)

    seed0 = cfg.seeds[0]
    grids = {m: tuned_grid(m, cfg) for m in cfg.methods}
    tune_keys = [(s, m, seed0, lr, "val") for s in cfg.scenarios for m in cfg.methods
                 for lr in grids[m]]
    compute(tune_keys)
    chosen: dict[str, dict[str, float]] = {}
    for s in cfg.scenarios:
        chosen[s] = {}
        for m in cfg.methods:
            records = [done[k] for k in tune_keys if k[0] == s and k[1] == m]
            chosen[s][m] = _best(records)["lr"] if records else None
        adamw = chosen[s].get("naive-adamw")
        for m in cfg.methods:
            if chosen[s][m] is None:
                spec = text_spec(m, cfg)
                pinned = "lr" in spec.options or spec.optimizer == "upgd"
                chosen[s][m] = _default_lr(cfg, m) if pinned or adamw is None else adamw
    keys = [(s, m, seed, chosen[s][m], cfg.eval_split)
            for s, m, seed in product(cfg.scenarios, cfg.methods, cfg.seeds)]
    compute(keys)
    tuning = [{"scenario": k[0], "method": k[1], "lr": k[3], **done[k]["metrics"]}
              for k in tune_keys]
    cells = [done[k] for k in keys]
    results = TextResults(cfg, run_id, run_dir, chosen, tuning, cells, summarize(cells))
    return results
