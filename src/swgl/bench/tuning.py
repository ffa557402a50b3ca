"""``swgl bench --tune``: every method tuned on a validation split with the same budget.

The protocol (issue 12, "Earn its place"):

1. **Grid, on validation.** Each method gets ``budget`` grid points: ``budget // S`` learning
   rates (log-spaced over its optimizer's ``lr_range``) times its ``S`` strength points
   (:meth:`MethodSpec.strength_grid`: EWC's ``lam``, SI's ``c``, SWGL's ``lambda_reg``...;
   ``S = 1`` for plain optimizers, which therefore get a finer learning-rate grid). ``budget``
   is ``lr_points`` times the largest ``S`` among the methods. Every point runs on
   ``eval_split="val"`` (a fixed 1/6 of the training set; the test set is never seen).
2. **Choice, per scenario.** The point with the best mean validation score (ACC; online
   accuracy in streams), ties within :data:`TIE` broken by learning accuracy. A choice at
   the top or bottom of the lr grid is flagged (``lr_edge``): the optimum may lie outside.
3. **Final, on test.** Every method with its chosen options, ``final_seeds`` seeds, side by
   side in one run per scenario. Each method's delta score is paired by seed against the
   tuned plain optimizer of its family (``OptimizerInfo.baseline``: ``naive-sgd`` for SGD and
   UPGD, ``naive-adam`` for Adam, ``naive-adamw`` for AdamW), which is added to the run.

Every cell is an ordinary cached cell (``runner.run``), so a killed tuning resumes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from swgl.bench import report
from swgl.bench.config import BenchConfig
from swgl.bench.methods import OPTIMIZERS
from swgl.bench.provenance import code_identity
from swgl.bench.results import Results, atomic_write_text
from swgl.bench.runner import run
from swgl.bench.scenarios import SCENARIOS

__all__ = ["TIE", "TuneOptions", "TuneResults", "baselines", "headline", "lr_grid", "method_grids",
           "n_cells", "tune", "with_baselines"]

log = logging.getLogger(__name__)

#: Validation-score differences below this are ties, broken by learning accuracy.
TIE = 0.005


@dataclass(frozen=True)
class TuneOptions:
    """How ``--tune`` spends its budget.

    ``lr_ranges`` overrides an optimizer's ``lr_range`` (``{"sgd": (0.003, 0.3)}``);
    ``strength`` overrides a method's strength grid (``{"ewc": {"lam": (10, 100, 1000)}}``,
    ``{}`` to tune the learning rate only).
    """

    lr_points: int = 4
    seeds: tuple[int, ...] = (0,)
    final_seeds: tuple[int, ...] = (0, 1, 2)
    lr_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    strength: Mapping[str, Mapping[str, Sequence[Any]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.lr_points, bool) or not isinstance(self.lr_points, int):
            raise TypeError(f"lr_points must be an int, got {self.lr_points!r}")
        if self.lr_points < 1:
            raise ValueError(f"lr_points must be >= 1, got {self.lr_points!r}")
        for name in ("seeds", "final_seeds"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, (tuple, list)) or not value:
                raise TypeError(f"{name} must be a non-empty tuple of ints, got {value!r}")
            object.__setattr__(self, name, tuple(value))
        for opt, span in self.lr_ranges.items():
            if opt not in OPTIMIZERS:
                raise ValueError(f"lr_ranges: optimizer must be one of {sorted(OPTIMIZERS)}, "
                                 f"got {opt!r}")
            if (not isinstance(span, (tuple, list)) or len(span) != 2
                    or not 0 < span[0] <= span[1]):
                raise ValueError(f"lr_ranges[{opt!r}] must be (low, high) with "
                                 f"0 < low <= high, got {span!r}")


@dataclass
class TuneResults:
    """What :func:`tune` returns; ``tune_dir`` holds grid.json, tuned.json/.md, frontier PNGs."""

    tune_dir: Path
    grids: dict[str, list[dict[str, Any]]]
    val: dict[str, dict[str, list[dict[str, Any]]]]
    chosen: dict[str, dict[str, dict[str, Any]]]
    final: dict[str, Results]
    rows: list[dict[str, Any]]


def headline(scenario: str) -> str:
    """The metric a scenario is judged on: online accuracy in streams, else final ACC."""
    return "online_acc" if SCENARIOS[scenario].streaming else "acc"


def lr_grid(low: float, high: float, n: int) -> list[float]:
    """``n`` learning rates log-spaced over [low, high], to 3 significant digits."""
    if n == 1:
        return [float(f"{math.sqrt(low * high):.3g}")]
    return [float(f"{v:.3g}") for v in np.geomspace(low, high, n)]


def _strength_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
    keys = list(grid)
    return [dict(zip(keys, values)) for values in product(*(tuple(grid[k]) for k in keys))]


def method_grids(cfg: BenchConfig, methods: Sequence[str],
                 opts: TuneOptions) -> dict[str, list[dict[str, Any]]]:
    """Each method's grid points (``{"lr": ..., **strength}``), with an equal budget."""
    unknown = sorted(set(opts.strength) - set(methods))
    if unknown:   # a misspelt name would leave its method on the default grid, silently
        raise ValueError(f"tune strength grids name {unknown}, not among the run's methods "
                         f"{list(methods)}")
    strengths = {}
    for m in methods:
        spec = cfg.method_spec(m)
        grid = (opts.strength[m] if m in opts.strength
                else spec.strength_grid(OPTIMIZERS[spec.optimizer]))
        strengths[m] = _strength_points(grid) if grid else [{}]
    # a grid that names its own lrs (MESU, BGD: a multiplier of sigma^2, not comparable to the
    # optimizer family's lr) is used as it is
    own_lr = {m for m, points in strengths.items() if any("lr" in p for p in points)}
    budget = opts.lr_points * max([len(s) for m, s in strengths.items() if m not in own_lr] or [1])
    grids = {m: list(strengths[m]) for m in own_lr}
    for m in methods:
        if m in own_lr:
            continue
        spec = cfg.method_spec(m)
        info = OPTIMIZERS[spec.optimizer]
        n_lr = max(1, budget // len(strengths[m]))
        if n_lr * len(strengths[m]) != budget:
            log.warning("%s: %d strength points do not divide the budget %d; it gets %d points",
                        m, len(strengths[m]), budget, n_lr * len(strengths[m]))
        lrs = lr_grid(*opts.lr_ranges.get(spec.optimizer, info.lr_range), n_lr)
        grids[m] = [{"lr": lr, **s} for s in strengths[m] for lr in lrs]
    return grids


def baselines(cfg: BenchConfig, methods: Sequence[str]) -> dict[str, str]:
    """method -> the plain method it is compared with (its optimizer's ``baseline``)."""
    return {m: OPTIMIZERS[cfg.method_spec(m).optimizer].baseline for m in methods}


def with_baselines(cfg: BenchConfig) -> tuple[str, ...]:
    """``cfg.methods`` preceded by the baselines they are compared with but lack."""
    base = baselines(cfg, cfg.methods)
    extra = [b for b in dict.fromkeys(base.values()) if b not in cfg.methods]
    return (*extra, *cfg.methods)


def n_cells(cfg: BenchConfig, opts: TuneOptions) -> int:
    """How many cells :func:`tune` runs (validation grid plus final table), for progress bars."""
    methods = with_baselines(cfg)
    grids = method_grids(replace(cfg, methods=methods), methods, opts)
    per_scenario = (sum(len(g) for g in grids.values()) * len(opts.seeds)
                    + len(methods) * len(opts.final_seeds))
    return len(cfg.scenarios) * per_scenario


def _variant(cfg: BenchConfig, method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """A variant of ``method`` with ``options`` on top of the config's own for it."""
    own = dict(cfg.variants.get(method, {"base": method}))
    return {**own, **cfg.method_opts.get(method, {}), **options}


def _check_no_fixed_tuned(cfg: BenchConfig, grids: Mapping[str, list[dict[str, Any]]]) -> None:
    """An option both fixed and tuned would be silently overridden: refuse it."""
    for m, points in grids.items():
        fixed = set(cfg.method_opts.get(m, {})) & set(points[0])
        if fixed:
            raise ValueError(f"method_opts[{m!r}] sets {sorted(fixed)}, which --tune tunes; "
                             "drop them, change the grid (--tune-grid) or pass --no-tune")
        fixed = (set(cfg.variants.get(m, {})) - {"base"}) & set(points[0])
        if fixed:
            raise ValueError(f"variant {m!r} sets {sorted(fixed)}, which --tune tunes (the lr "
                             f"always; a strength per --tune-grid): drop them from the variant, "
                             f"tune another option (--tune-grid {m}=none or another) or pass "
                             "--no-tune")
        swgl = {k for k in points[0] if k.startswith("swgl.") and k[5:] in cfg.swgl_opts}
        if swgl and cfg.method_spec(m).swgl is not None:
            raise ValueError(f"swgl_opts sets {sorted(k[5:] for k in swgl)}, which --tune tunes "
                             f"for {m!r}; drop it, change the grid (--tune-grid "
                             f"{m}=none or another option) or pass --no-tune")


def _pick(points: list[dict[str, Any]]) -> dict[str, Any]:
    top = max(p["score"] for p in points)
    return max((p for p in points if p["score"] >= top - TIE), key=lambda p: p["learning_acc"])


def _val_table(res: Results, names: Mapping[str, tuple[str, dict[str, Any]]]
               ) -> dict[str, dict[str, list[dict[str, Any]]]]:
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for row in res.summary:
        method, options = names[row["method"]]
        key = headline(row["scenario"])
        out.setdefault(row["scenario"], {}).setdefault(method, []).append({
            "options": options, "lr": options["lr"], "score": row[f"{key}_mean"],
            "score_std": row[f"{key}_std"], "acc": row["acc_mean"],
            "learning_acc": row["learning_acc_mean"], "forgetting": row["forgetting_mean"],
        })
    return out


def _edge(lr: float, points: Sequence[dict[str, Any]]) -> str | None:
    """"top"/"bottom" if ``lr`` is the grid's highest/lowest (the optimum may lie outside)."""
    lrs = sorted({p["lr"] for p in points})
    if len(lrs) < 2:
        return None
    return "top" if lr == lrs[-1] else "bottom" if lr == lrs[0] else None


def _final_rows(scenario: str, res: Results, chosen: Mapping[str, Mapping[str, Any]],
                val: Mapping[str, list[dict[str, Any]]], base: Mapping[str, str]
                ) -> list[dict[str, Any]]:
    key = headline(scenario)
    by = {(c["method"], c["seed"]): c["metrics"] for c in res.cells}
    seeds = sorted({c["seed"] for c in res.cells})
    rows = []
    for row in res.summary:
        m = row["method"]
        b = base.get(m, m)
        deltas = [by[(m, s)][key] - by[(b, s)][key] for s in seeds]
        rows.append({
            "scenario": scenario, "method": m, "baseline": b, "metric": key,
            "options": dict(chosen[m]), "val_score": _pick(val[m])["score"],
            "lr_edge": _edge(chosen[m]["lr"], val[m]),
            "n_seeds": row["n_seeds"],
            **{k: row[k] for k in row if k.endswith(("_mean", "_std"))},
            "delta_mean": float(np.mean(deltas)), "delta_std": float(np.std(deltas)),
        })
    return rows


def tune(base: BenchConfig, opts: TuneOptions = TuneOptions(), *, out_dir: str | Path = "runs",
         resume: bool = False, workers: int = 1,
         on_cell: Callable[[dict[str, Any], bool], None] | None = None,
         plots: bool = True) -> TuneResults:
    """Tune every method of ``base`` per scenario on validation, then run the test table.

    ``base.seeds`` and ``base.eval_split`` are replaced by ``opts.seeds`` (on "val") and
    ``opts.final_seeds`` (on "test"). Writes ``<out_dir>/tune-<id>/``.
    """
    methods = with_baselines(base)
    cfg = replace(base, methods=methods)
    grids = method_grids(cfg, methods, opts)
    _check_no_fixed_tuned(cfg, grids)
    names, variants = {}, {}
    for m, points in grids.items():
        for i, point in enumerate(points):
            names[f"{m}@{i}"] = (m, point)
            variants[f"{m}@{i}"] = _variant(cfg, m, point)
    grid_cfg = replace(cfg, methods=tuple(variants), variants=variants, method_opts={},
                       seeds=opts.seeds, eval_split="val")
    tag = json.dumps({"grid": grid_cfg.run_id(), "final": list(opts.final_seeds)})
    tune_dir = Path(out_dir) / f"tune-{base.dataset}-{hashlib.sha1(tag.encode()).hexdigest()[:10]}"
    val_res = run(grid_cfg, out_dir=tune_dir / "val", resume=resume, on_cell=on_cell,
                  write_reports=False, workers=workers)
    val = _val_table(val_res, names)
    chosen = {s: {m: _pick(points)["options"] for m, points in per.items()}
              for s, per in val.items()}
    base_of = baselines(cfg, methods)
    final, rows = {}, []
    for scenario in cfg.scenarios:
        final_cfg = replace(cfg, scenarios=(scenario,), seeds=opts.final_seeds,
                            eval_split="test",
                            method_opts={m: {**cfg.method_opts.get(m, {}), **chosen[scenario][m]}
                                         for m in methods})
        res = run(final_cfg, out_dir=tune_dir / "test", resume=resume, on_cell=on_cell,
                  write_reports=False, workers=workers)
        report.write_all(res, plots=plots)   # results.json and the CSVs whatever the plots
        final[scenario] = res
        rows += _final_rows(scenario, res, chosen[scenario], val[scenario], base_of)
    out = TuneResults(tune_dir, grids, val, chosen, final, rows)
    _write(out, grid_cfg, plots)
    return out


def _write(res: TuneResults, grid_cfg: BenchConfig, plots: bool) -> None:
    d = res.tune_dir
    atomic_write_text(d / "grid.json", json.dumps({
        "val_config": grid_cfg.to_dict(), "grids": res.grids, "val": res.val,
        "chosen": res.chosen, "final_runs": {s: r.run_id for s, r in res.final.items()},
    }, indent=2))
    # self-describing: what was tuned and by which code, beside the rows (a user's audit)
    atomic_write_text(d / "tuned.json", json.dumps({
        "rows": res.rows, "units": "accuracies, forgetting and deltas as fractions (0 to 1)",
        "val_config": grid_cfg.to_dict(), "final_runs": {s: r.run_id for s, r in res.final.items()},
        "code": code_identity(),
    }, indent=2))
    atomic_write_text(d / "tuned.md", report.tuned_markdown(res.rows))
    if plots:
        for scenario, per in res.val.items():
            report.frontier_plot(scenario, per, res.chosen[scenario], headline(scenario),
                                 d / f"frontier_{scenario}.png")
