"""What a run produces: the :class:`Results` record, the seed summary and atomic file writes.

Shared by the runner (which fills it) and the reports (which read it), so neither imports
the other's internals.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from swgl.bench.config import BenchConfig

__all__ = ["Results", "SUMMARY_METRICS", "atomic_write_text", "compute_cells", "summarize"]

#: Metrics summarised as mean and std over seeds (``shifted``: the share of runs in which
#: SWGL's detector found a shift, for methods that have one).
SUMMARY_METRICS = ("acc", "bwt", "fwt", "forgetting", "learning_acc", "online_acc", "plasticity",
                   "time_per_step_ms", "state_bytes_per_param", "shifted")


@dataclass
class Results:
    """What :func:`swgl.bench.runner.run` returns: the config, every cell and the summary."""

    config: BenchConfig
    run_id: str
    run_dir: Path
    cells: list[dict[str, Any]]
    summary: list[dict[str, Any]]


@functools.cache
def _umask() -> int:
    """The process's umask, read once (reading it means setting it, which races other
    threads' file creation if done at every write)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file 0600: give it the mode open() would (0666 less the umask)
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def compute_cells(run_cell: Callable[..., dict[str, Any]], args: tuple, keys: Sequence[tuple],
                  finish: Callable[[tuple, dict[str, Any]], None], workers: int) -> None:
    """``finish(key, run_cell(*args, *key))`` for every key, in this process or in a pool of
    ``workers`` spawned processes of one thread each (shared by the image and text runners)."""
    if workers == 1:
        for key in keys:
            finish(key, run_cell(*args, *key))
        return
    if not keys:
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                             initializer=_init_worker, initargs=(1,)) as pool:
        futures = {pool.submit(run_cell, *args, *key): key for key in keys}
        for future in as_completed(futures):
            finish(futures[future], future.result())


def summarize(cells: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and (population) std over seeds of every metric, per (scenario, method)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for cell in cells:
        groups.setdefault((cell["scenario"], cell["method"]), []).append(cell)
    rows = []
    for (scenario, method), group in groups.items():
        row: dict[str, Any] = {"scenario": scenario, "method": method, "n_seeds": len(group)}
        for m in SUMMARY_METRICS:
            values = [c["metrics"][m] for c in group if m in c["metrics"]]
            if values:
                row[f"{m}_mean"] = float(np.mean(values))
                row[f"{m}_std"] = float(np.std(values))
        rows.append(row)
    return rows
