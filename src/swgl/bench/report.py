"""Reports of a finished run: results.json, CSV files, a rich table and PNG plots."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from swgl.bench.results import SUMMARY_METRICS, Results, atomic_write_text

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["TABLE_COLUMNS", "frontier_plot", "load_results", "summary_table", "tuned_markdown",
           "tuned_table", "write_all", "write_plots"]

log = logging.getLogger(__name__)

#: (metric, header, scale, format) of the printed table; accuracies are shown in %.
TABLE_COLUMNS = (
    ("acc", "ACC %", 100, ".1f"),
    ("bwt", "BWT %", 100, "+.1f"),
    ("forgetting", "Forget %", 100, ".1f"),
    ("learning_acc", "LA %", 100, ".1f"),
    ("online_acc", "Online %", 100, ".1f"),
    ("plasticity", "Plast.", 1, ".3f"),
    ("time_per_step_ms", "ms/step", 1, ".2f"),
    ("state_bytes_per_param", "B/param", 1, ".1f"),
)


def results_dict(results: Results) -> dict[str, Any]:
    return {"run_id": results.run_id, "config": results.config.to_dict(),
            "summary": results.summary, "cells": results.cells}


def _csv(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_all(results: Results, plots: bool = True) -> None:
    """results.json, results.csv (mean/std per scenario and method), cells.csv and plots."""
    d = results.run_dir
    atomic_write_text(d / "results.json", json.dumps(results_dict(results)))
    stats = [f"{m}_{s}" for m in SUMMARY_METRICS for s in ("mean", "std")]
    atomic_write_text(d / "results.csv",
                      _csv(results.summary, ["scenario", "method", "n_seeds", *stats]))
    flat = [{"scenario": c["scenario"], "method": c["method"], "seed": c["seed"],
             **c["metrics"]} for c in results.cells]
    atomic_write_text(d / "cells.csv",
                      _csv(flat, ["scenario", "method", "seed", *SUMMARY_METRICS]))
    if plots:
        write_plots(results_dict(results), d)


def load_results(run: str | Path, runs_dir: str | Path = "runs") -> dict[str, Any]:
    """Load a run's results.json, given its folder or its run id."""
    path = Path(run)
    if not path.is_dir():
        path = Path(runs_dir) / str(run)
    file = path / "results.json"
    if not file.is_file():
        hint = ("; it is a --tune folder: `swgl bench` draws its frontier plots there (rerun "
                "the same command with --resume, without --no-plots)"
                if (path / "tuned.json").is_file() else "")
        raise FileNotFoundError(f"run={str(run)!r}: no results.json in {path}{hint}")
    try:
        results = json.loads(file.read_text())
    except ValueError as exc:  # bad JSON, or bytes that are not UTF-8
        results, reason = None, str(exc)
    else:
        reason = "not a results object"
    if not isinstance(results, dict) or "summary" not in results:
        raise ValueError(
            f"{file} is damaged ({reason}); rebuild it from the cell files by rerunning "
            "`swgl bench` with the same options and --resume"
        )
    return results


def summary_table(summary: Sequence[dict[str, Any]], title: str = "") -> Table:
    """A rich table of mean ± std per (scenario, method); columns absent from a run are hidden."""
    from rich.table import Table

    present = [c for c in TABLE_COLUMNS if any(f"{c[0]}_mean" in row for row in summary)]
    table = Table(title=title)
    table.add_column("scenario")
    table.add_column("method")
    for _, header, _, _ in present:
        table.add_column(header, justify="right")
    for row in summary:
        cells = []
        for metric, _, scale, fmt in present:
            if f"{metric}_mean" in row:
                mean, std = row[f"{metric}_mean"] * scale, row[f"{metric}_std"] * scale
                cells.append(f"{mean:{fmt}} ± {abs(std):.1f}" if scale == 100
                             else f"{mean:{fmt}} ± {abs(std):{fmt.lstrip('+')}}")
            else:
                cells.append("")
        table.add_row(row["scenario"], _method_label(row), *cells)
    return table


def _method_label(row: dict[str, Any]) -> str:
    """The method's name, with a note where SWGL's detector found no shift in some runs: there
    the rule never acted (under v6 the run is its base optimizer's)."""
    share = row.get("shifted_mean")
    if share is None or share == 1.0:
        return row["method"]
    found = round(share * row["n_seeds"])
    return f"{row['method']} (no shift found in {row['n_seeds'] - found} of {row['n_seeds']} runs)"


# -- the tuned table (swgl bench --tune) -----------------------------------------------------------

_METRIC_NAMES = {"acc": "ACC", "online_acc": "online acc"}


def _pm(row: dict[str, Any], key: str, signed: bool = False) -> str:
    mean, std = 100 * row[f"{key}_mean"], 100 * row[f"{key}_std"]
    return f"{mean:{'+' if signed else ''}.1f} ± {std:.1f}"


def _chosen(options: dict[str, Any]) -> tuple[str, str]:
    rest = ", ".join(f"{k.removeprefix('swgl.')}={v:g}" if isinstance(v, float)
                     else f"{k.removeprefix('swgl.')}={v}" for k, v in options.items() if k != "lr")
    return f"{options['lr']:g}", rest


def _tuned_cells(row: dict[str, Any]) -> list[str]:
    lr, strength = _chosen(row["options"])
    if row.get("lr_edge"):
        lr += f" ({row['lr_edge']})"
    delta = ("baseline" if row["method"] == row["baseline"]
             else f"{_pm(row, 'delta', signed=True)} vs {row['baseline']}")
    return [_method_label(row), lr, strength, f"{100 * row['val_score']:.1f}",
            _pm(row, row["metric"]), _pm(row, "learning_acc"), _pm(row, "forgetting"), delta]


_TUNED_HEAD = ["method", "lr", "strength", "val %", "test % (ACC; online in streams)", "LA %",
               "forgetting %",
               "Δ vs tuned plain (paired by seed)"]


def tuned_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """One markdown table per scenario: chosen options, test score ± std, delta vs baseline."""
    lines = []
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        group = [r for r in rows if r["scenario"] == scenario]
        metric = _METRIC_NAMES.get(group[0]["metric"], group[0]["metric"])
        lines += [f"**{scenario}**: test {metric} %, mean ± std over {group[0]['n_seeds']} "
                  "seeds, options tuned on the validation split; lr (top)/(bottom): chosen at "
                  "the edge of the grid, widen --lr-range", "",
                  "| " + " | ".join(_TUNED_HEAD) + " |", "|" + "---|" * len(_TUNED_HEAD)]
        lines += ["| " + " | ".join(_tuned_cells(r)) + " |" for r in group]
        lines.append("")
    return "\n".join(lines)


def tuned_table(rows: Sequence[dict[str, Any]], title: str = "") -> Table:
    """The tuned table as a rich table (every scenario, one row per method)."""
    from rich.table import Table

    table = Table(title=title, caption="lr (top)/(bottom): chosen at the edge of the lr grid "
                  "(the optimum may lie outside: widen --lr-range)")
    table.add_column("scenario")
    for head in _TUNED_HEAD:
        table.add_column(head, justify="left" if head in ("method", "strength") else "right")
    for r in rows:
        table.add_row(r["scenario"], *_tuned_cells(r))
    return table


# -- plots -----------------------------------------------------------------------------------------


def frontier_plot(scenario: str, val: dict[str, list[dict[str, Any]]],
                  chosen: dict[str, dict[str, Any]], metric: str, path: Path) -> Path:
    """The stability-plasticity frontier on validation: score and LA against lr, per method.

    At each learning rate a method's line takes its best strength point (by score); the
    chosen point is circled.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (method, points) in enumerate(val.items()):
        best: dict[float, dict[str, Any]] = {}
        for p in points:
            if p["lr"] not in best or p["score"] > best[p["lr"]]["score"]:
                best[p["lr"]] = p
        lrs = sorted(best)
        style = dict(color=f"C{i % 10}", ls="-" if method.startswith("naive") else "--",
                     marker="o", ms=3, lw=1.4 if method.startswith("naive") else 1.0)
        left.plot(lrs, [100 * best[x]["score"] for x in lrs], label=method, **style)
        right.plot(lrs, [100 * best[x]["learning_acc"] for x in lrs], **style)
        pick = next(p for p in points if p["options"] == chosen[method])
        left.plot([pick["lr"]], [100 * pick["score"]], "o", mfc="none", ms=9, color=style["color"])
        right.plot([pick["lr"]], [100 * pick["learning_acc"]], "o", mfc="none", ms=9,
                   color=style["color"])
    for ax, label in ((left, f"validation {_METRIC_NAMES.get(metric, metric)} %"),
                      (right, "validation learning accuracy %")):
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    left.legend(fontsize=7, ncol=2)
    fig.suptitle(f"{scenario}: stability-plasticity frontier (best strength per lr; "
                 "circle = chosen)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_png(fig, path)
    return path


def _by(cells, scenario):
    out: dict[str, list[dict[str, Any]]] = {}
    for c in cells:
        if c["scenario"] == scenario:
            out.setdefault(c["method"], []).append(c)
    return out


def axes_grid(n: int):
    """A figure with ``n`` visible axes, up to 4 a row (shared by the text report)."""
    import matplotlib.pyplot as plt

    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def save_png(fig, path: Path) -> None:
    """Write ``fig`` as a PNG atomically (temp file, then rename) and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def _matrices(scenario: str, methods: dict[str, list[dict]], out: Path) -> None:
    fig, axes = axes_grid(len(methods))
    for ax, (method, cells) in zip(axes, methods.items()):
        R = np.mean([c["R"] for c in cells], axis=0) * 100
        ax.imshow(R, vmin=0, vmax=100, cmap="viridis")
        T = len(R)
        if T <= 10:
            for i in range(T):
                for j in range(T):
                    ax.text(j, i, f"{R[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if R[i, j] < 60 else "black")
        ax.set_title(f"{method}\nACC {R[-1].mean():.1f}%", fontsize=9)
        ax.set_xlabel("evaluated on task")
        ax.set_ylabel("after training task")
    fig.suptitle(f"{scenario}: accuracy matrix (mean over seeds, %)")
    fig.tight_layout()
    save_png(fig, out / f"acc_matrix_{scenario}.png")


def _curves(scenario: str, methods: dict[str, list[dict]], out: Path) -> None:
    fig, axes = axes_grid(len(methods))
    for ax, (method, cells) in zip(axes, methods.items()):
        curve = cells[0]["curve"]
        acc = np.array([a for a in curve["acc"] if a]) * 100
        steps = [s for s, a in zip(curve["step"], curve["acc"]) if a]
        for j in range(acc.shape[1] if acc.size else 0):
            ax.plot(steps, acc[:, j], label=f"task {j}", lw=1.2)
        ax.set_ylim(0, 100)
        ax.set_title(f"{method} (seed {cells[0]['seed']})", fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel("accuracy %")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 10) or 1, fontsize=7)
    fig.suptitle(f"{scenario}: per-task accuracy over training")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    save_png(fig, out / f"task_curves_{scenario}.png")


def _stability(scenario: str, method: str, cell: dict, out: Path) -> None:
    stab = cell["stability"]
    layers = stab["layers"]
    if not layers:
        return
    fig, axes = axes_grid(len(layers))
    steps = stab["step"]
    for ax, (name, qs) in zip(axes, layers.items()):
        q = np.maximum(np.array(qs), 1e-12)  # log axis: zero stability (dead inputs) at 1e-12
        ax.fill_between(steps, q[:, 0], q[:, 4], alpha=0.2, label="5-95%")
        ax.fill_between(steps, q[:, 1], q[:, 3], alpha=0.4, label="25-75%")
        ax.plot(steps, q[:, 2], lw=1.2, label="median")
        ax.set_yscale("log")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("training step")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"{scenario} / {method}: SWGL stability state per layer (seed {cell['seed']})")
    fig.tight_layout()
    save_png(fig, out / f"stability_{scenario}_{method}.png")


def _online(scenario: str, methods: dict[str, list[dict]], out: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    for method, cells in methods.items():
        curves = [c["online_curve"]["acc"] for c in cells]
        ax.plot(cells[0]["online_curve"]["step"], np.mean(curves, axis=0) * 100, label=method,
                lw=1.0)
    ax.set_xlabel("step")
    ax.set_ylabel("online accuracy % (window mean)")
    ax.set_title(f"{scenario}: online accuracy (mean over seeds)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_png(fig, out / f"online_{scenario}.png")


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """Write every plot of a results dict into ``out``; return the files written."""
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.glob("*.png"))
    cells = results["cells"]
    for scenario in dict.fromkeys(c["scenario"] for c in cells):
        methods = _by(cells, scenario)
        _matrices(scenario, methods, out)
        _curves(scenario, methods, out)
        if all(c.get("online_curve") for group in methods.values() for c in group):
            _online(scenario, methods, out)
        for method, group in methods.items():
            _stability(scenario, method, group[0], out)
    written = sorted(set(out.glob("*.png")) | before)
    log.info("wrote %d plots to %s", len(written), out)
    return written
