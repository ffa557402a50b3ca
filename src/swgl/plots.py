"""Plots of stability dynamics and accuracy from a bench run (needs the ``bench`` extra).

The inputs are the JSON records a bench cell stores (``runs/<id>/cells/<cell>.json``):

* ``cell["stability"]``: ``{"step", "quantiles", "layers": {name: [[q...] per step]}}``,
  optionally with ``"at_boost"``, ``"at_damping"`` and ``"mean_scale"`` per layer (the layout
  of :meth:`swgl.stats.StatsHistory.to_dict`); ``None`` marks a step a layer has no state;
* ``cell["curve"]``: ``{"step": [...], "acc": [[accuracy of task t] per step]}``.

Figures are built with ``matplotlib.figure.Figure`` (no pyplot, no global backend change).
:func:`plot_run` renders every cell of a run; ``swgl plot RUN`` calls it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_accuracy", "plot_cell", "plot_run", "plot_scale_limits", "plot_stability"]

#: Layers drawn per panel; more become unreadable (pass ``layers=`` to pick).
MAX_LAYERS = 6


def _pick(layers: dict[str, Any], chosen: Sequence[str] | None) -> list[str]:
    if chosen is not None:
        missing = [name for name in chosen if name not in layers]
        if missing:
            raise ValueError(f"layers {missing} are not in the record; it has {sorted(layers)}")
        return list(chosen)
    return list(layers)[:MAX_LAYERS]


def _series(steps: list[int], values: list[Any]) -> tuple[list[int], list[Any]]:
    kept = [(s, v) for s, v in zip(steps, values) if v is not None]
    return [s for s, _ in kept], [v for _, v in kept]


def plot_stability(stability: dict[str, Any], ax: Any, layers: Sequence[str] | None = None) -> Any:
    """Median stability per layer over steps, with a band from the lowest to highest quantile."""
    steps, qs = stability["step"], stability["quantiles"]
    mid = min(range(len(qs)), key=lambda i: abs(qs[i] - 0.5))
    for name in _pick(stability["layers"], layers):
        x, rows = _series(steps, stability["layers"][name])
        if not x:
            continue
        (line,) = ax.plot(x, [r[mid] for r in rows], label=name)
        if len(qs) > 1:
            ax.fill_between(x, [r[0] for r in rows], [r[-1] for r in rows],
                            color=line.get_color(), alpha=0.15, linewidth=0)
    if any(v is not None and any(q > 0 for q in v)
           for rows in stability["layers"].values() for v in rows):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel(f"stability (p{qs[mid] * 100:g}, band p{qs[0] * 100:g}-p{qs[-1] * 100:g})")
    ax.legend(fontsize="x-small")
    return ax


def plot_scale_limits(stability: dict[str, Any], ax: Any,
                      layers: Sequence[str] | None = None) -> Any:
    """Fraction of elements at the boost limit (solid) and the damping limit (dashed)."""
    steps, recorded = stability["step"], stability.get("at_boost", {})
    if layers is not None:
        layers = [name for name in layers if name in recorded]
    for name in _pick(recorded, layers):
        x, boost = _series(steps, stability["at_boost"][name])
        (line,) = ax.plot(x, boost, label=f"{name} boost")
        x, damp = _series(steps, stability["at_damping"][name])
        ax.plot(x, damp, linestyle="--", color=line.get_color(), label=f"{name} damping")
    ax.set_xlabel("step")
    ax.set_ylabel("fraction of elements at the limit")
    ax.set_ylim(0.0, 1.0)
    ax.legend(fontsize="x-small")
    return ax


def plot_accuracy(curve: dict[str, Any], ax: Any) -> Any:
    """Accuracy on each task over training steps."""
    steps, accs = curve["step"], curve["acc"]
    n_tasks = max((len(a) for a in accs), default=0)
    for t in range(n_tasks):
        x, y = _series(steps, [a[t] if t < len(a) else None for a in accs])
        ax.plot(x, y, label=f"task {t}")
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0.0, 1.0)
    if n_tasks:
        ax.legend(fontsize="x-small")
    return ax


def plot_cell(cell: dict[str, Any], path: str | Path, layers: Sequence[str] | None = None) -> Path:
    """One bench cell as a PNG: accuracy, stability and (when recorded) limit fractions."""
    from matplotlib.figure import Figure

    panels = []
    if cell.get("curve") and cell["curve"].get("step"):
        panels.append(lambda ax: plot_accuracy(cell["curve"], ax))
    stability = cell.get("stability") or {}
    if stability.get("step") and stability.get("layers"):
        panels.append(lambda ax: plot_stability(stability, ax, layers))
        if stability.get("at_boost"):
            panels.append(lambda ax: plot_scale_limits(stability, ax, layers))
    if not panels:
        raise ValueError("the cell has neither an accuracy curve nor stability records to plot")
    fig = Figure(figsize=(5.5 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for draw, ax in zip(panels, axes):
        draw(ax)
    title = " / ".join(str(cell[k]) for k in ("scenario", "method", "seed") if k in cell)
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Render every ``cells/*.json`` of a bench run to ``<out_dir>/<cell>.png``.

    ``out_dir`` defaults to ``<run_dir>/plots``. Returns the written paths.
    """
    run_dir = Path(run_dir)
    cells = sorted((run_dir / "cells").glob("*.json"))
    if not cells:
        raise FileNotFoundError(f"no cells/*.json under {run_dir}: is it a bench run directory?")
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    return [plot_cell(json.loads(c.read_text()), out / f"{c.stem}.png") for c in cells]

