"""Reports of a text run: results.json, results.csv, a rich table and the PNG plots.

Plots mirror the image scenarios': ``loss_matrix_<scenario>.png`` (the domains x domains
loss matrix of each method, mean over seeds) and ``domain_curves_<scenario>.png`` (each
domain's loss over training, first seed), on the split the cells were scored on.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from swgl.bench.report import axes_grid, save_png
from swgl.bench.results import atomic_write_text
from swgl.bench.text.bench import SUMMARY_METRICS, TextResults

if TYPE_CHECKING:
    from rich.table import Table

__all__ = ["results_dict", "summary_table", "write_all", "write_plots"]

#: (metric, header, format) of the printed table; losses in nats per byte.
COLUMNS = (
    ("final_loss", "final loss", ".4f"),
    ("forgetting", "forgetting", ".4f"),
    ("learning_loss", "learning loss", ".4f"),
    ("time_per_step_ms", "ms/step", ".1f"),
)


def results_dict(results: TextResults) -> dict[str, Any]:
    return {"run_id": results.run_id, "config": results.config.to_dict(),
            "chosen_lr": results.chosen_lr, "tuning": results.tuning,
            "summary": results.summary, "cells": results.cells}


def write_all(results: TextResults, plots: bool = True) -> list[Path]:
    """results.json, results.csv and (unless ``plots=False``) the plots; returns the PNGs."""
    d = results.run_dir
    atomic_write_text(d / "results.json", json.dumps(results_dict(results)))
    columns = ["scenario", "method", "n_seeds", "lr",
               *[f"{m}_{s}" for m in SUMMARY_METRICS for s in ("mean", "std")]]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(results.summary)
    atomic_write_text(d / "results.csv", buf.getvalue())
    return write_plots(results_dict(results), d) if plots else []


def summary_table(summary: Sequence[dict[str, Any]], title: str = "") -> Table:
    """Mean ± std per (scenario, method), and each method's lr."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("scenario", "method", "lr"):
        table.add_column(col)
    for _, header, _ in COLUMNS:
        table.add_column(header, justify="right")
    for row in summary:
        table.add_row(row["scenario"], row["method"], f"{row['lr']:g}",
                      *[f"{row[f'{m}_mean']:{fmt}} ± {row[f'{m}_std']:{fmt}}"
                        for m, _, fmt in COLUMNS])
    return table


def _matrices(scenario: str, methods: dict[str, list[dict]], out: Path) -> Path:
    fig, axes = axes_grid(len(methods))
    mats = {m: np.mean([c["L"] for c in cells], axis=0) for m, cells in methods.items()}
    lo = min(float(L.min()) for L in mats.values())
    hi = max(float(L.max()) for L in mats.values())
    for ax, (method, L) in zip(axes, mats.items()):
        domains = next(iter(methods[method]))["domains"]
        ax.imshow(L, vmin=lo, vmax=hi, cmap="viridis_r")
        for i in range(len(L)):
            for j in range(len(L)):
                ax.text(j, i, f"{L[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if L[i, j] > (lo + hi) / 2 else "black")
        ax.set_xticks(range(len(domains)), domains, fontsize=7)
        ax.set_yticks(range(len(domains)), domains, fontsize=7)
        ax.set_title(f"{method}\nfinal {L[-1].mean():.3f} nats/byte", fontsize=9)
        ax.set_xlabel("evaluated on domain")
        ax.set_ylabel("after training through")
    split = next(iter(methods.values()))[0]["split"]
    fig.suptitle(f"{scenario}: {split} loss matrix (nats/byte, mean over seeds)")
    fig.tight_layout()
    path = out / f"loss_matrix_{scenario}.png"
    save_png(fig, path)
    return path


def _curves(scenario: str, methods: dict[str, list[dict]], out: Path) -> Path:
    fig, axes = axes_grid(len(methods))
    top = max(float(np.max(c["curve"]["loss"][1:])) for cells in methods.values()
              for c in cells[:1])
    for ax, (method, cells) in zip(axes, methods.items()):
        cell = cells[0]
        loss = np.array(cell["curve"]["loss"])
        for j, name in enumerate(cell["domains"]):
            ax.plot(cell["curve"]["step"], loss[:, j], label=name, lw=1.2)
        steps_per = cell["steps"] // len(cell["domains"])
        for k in range(1, len(cell["domains"])):
            ax.axvline(k * steps_per, color="grey", lw=0.5, ls=":")
        ax.set_ylim(top=top * 1.05)
        ax.set_title(f"{method} (seed {cell['seed']}, lr {cell['lr']:g})", fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylabel("loss (nats/byte)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7)
    fig.suptitle(f"{scenario}: per-domain {cells[0]['split']} loss over training")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    path = out / f"domain_curves_{scenario}.png"
    save_png(fig, path)
    return path


def write_plots(results: dict[str, Any], out: Path) -> list[Path]:
    """Write both plots of every scenario of a results dict into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    cells = results["cells"]
    for scenario in dict.fromkeys(c["scenario"] for c in cells):
        methods: dict[str, list[dict]] = {}
        for c in cells:
            if c["scenario"] == scenario:
                methods.setdefault(c["method"], []).append(c)
        written += [_matrices(scenario, methods, out), _curves(scenario, methods, out)]
    return written
