"""Run a benchmark: every (scenario, method, seed) cell, cached on disk as it finishes.

Each finished cell is written atomically to ``runs/<run-id>/cells/<cell>.json`` (temp file
then ``os.replace``), so a killed run loses at most the cell in progress and ``resume=True``
skips every cell already on disk.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from swgl.bench import metrics, report
from swgl.bench.config import BenchConfig
from swgl.bench.data import DATASETS, load_dataset, validation_split
from swgl.bench.methods import Context, Method, make_method
from swgl.bench.methods.swgl import stability_tensors
from swgl.bench.models import build_model
from swgl.bench.provenance import code_identity
from swgl.bench.results import Results, atomic_write_text, compute_cells, summarize
from swgl.bench.scenarios import Scenario, ScenarioOptions, build_scenario

__all__ = ["Results", "run", "run_cell", "grid", "summarize", "atomic_write_text", "device_of"]

log = logging.getLogger(__name__)

#: Quantiles of each layer's stability recorded for the stability-over-time plots.
STABILITY_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_EVAL_CHUNK = 2048
_STREAM_WINDOWS = 10          # online-accuracy points per stream segment
_CONSOLIDATE_BATCHES = 16     # recent batches a stream hands to end_task at a pseudo-boundary
_END_TASK_BATCH = 64


# -- files ---------------------------------------------------------------------------------------


def _cell_name(scenario: str, method: str, seed: int) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{scenario}__{method}__seed{seed}")


# -- one cell ------------------------------------------------------------------------------------


def device_of(name: str) -> torch.device:
    """``name`` as a torch device the benchmark can train on (cpu, cuda, mps); ValueError for
    another name or one this machine lacks (the CLI checks it before any cell runs)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be a torch device such as cpu, cuda or cuda:1, "
                         f"got {name!r}") from None
    available = {"cpu": lambda: True, "cuda": torch.cuda.is_available,
                 "mps": torch.backends.mps.is_available}
    if device.type not in available:
        raise ValueError(f"device={name!r}: the benchmark trains on {sorted(available)}")
    if not available[device.type]():
        raise ValueError(f"device={name!r} but this machine has no {device.type} device "
                         f"(torch.{'cuda' if device.type == 'cuda' else 'backends.mps'}"
                         ".is_available() is False)")
    return device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _evaluate(method: Method, scen: Scenario, device: torch.device) -> list[float]:
    """Accuracy on every task's eval set (task-IL logits masked to the task's head)."""
    model = method.model
    model.eval()
    accs = []
    for t in range(len(scen.tasks)):
        x, y = scen.eval_set(t)
        correct = 0
        for i in range(0, len(x), _EVAL_CHUNK):
            xb, yb = x[i:i + _EVAL_CHUNK].to(device), y[i:i + _EVAL_CHUNK].to(device)
            tids = torch.full((len(xb),), t, device=device)
            correct += int((method.logits(xb, tids).argmax(1) == yb).sum())
        accs.append(correct / max(len(x), 1))
    model.train()
    return accs


def _stability_summary(method: Method) -> dict[str, list[float]]:
    q = torch.tensor(STABILITY_QUANTILES)
    out = {}
    for name, s in stability_tensors(method).items():
        flat = s.flatten().cpu()
        if flat.numel() > 100_000:  # torch.quantile's input limit; a strided sample suffices
            flat = flat[:: math.ceil(flat.numel() / 100_000)]
        out[name] = torch.quantile(flat, q).tolist()
    return out


def _shifted(method: Method) -> dict[str, float]:
    """``{"shifted": 1.0}`` if the method's SWGL detector found a shift in any param group,
    0.0 if it has one and found none (the rule never acted: v6 ran as its base optimizer);
    ``{}`` for a method without a detector."""
    shifts = getattr(method.optimizer, "shifts", None)
    found = [g["last_shift"] > 0 for g in shifts() if g is not None] if shifts else []
    return {"shifted": float(any(found))} if found else {}


def _state_bytes(method: Method) -> int:
    """Bytes of every persistent tensor beyond the model: optimizer(s) and strategy state."""
    tensors: list[Tensor] = list(method.state_tensors())
    opts = [method.optimizer, getattr(method.optimizer, "base", None)]
    for opt in filter(None, opts):
        for state in opt.state.values():
            tensors += [v for v in state.values() if isinstance(v, Tensor)]
    seen, total = set(), 0
    for t in tensors:
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total


class _Recorder:
    """Per-task accuracy curve, and SWGL stability quantiles, over training steps."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.accs: list[list[float]] = []
        self.stab_steps: list[int] = []
        self.stability: dict[str, list[list[float]]] = {}

    def accuracy(self, step: int, accs: list[float]) -> None:
        self.steps.append(step)
        self.accs.append(accs)

    def stability_point(self, step: int, method: Method) -> None:
        summary = _stability_summary(method)
        if summary:
            self.stab_steps.append(step)
        for name, qs in summary.items():
            self.stability.setdefault(name, []).append(qs)

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.steps, "acc": self.accs}

    def stability_dict(self) -> dict[str, Any]:
        return {"step": self.stab_steps, "quantiles": list(STABILITY_QUANTILES),
                "layers": self.stability}


def _task_batches(scen: Scenario, t: int, device: torch.device) -> Callable[[], Iterator]:
    def batches() -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        idx = scen.tasks[t].train_idx
        for i in range(0, len(idx), _END_TASK_BATCH):
            x, y = scen.train_batch(t, idx[i:i + _END_TASK_BATCH])
            yield x.to(device), y.to(device), torch.full((len(x),), t, device=device)
    return batches


def _batches_per_pass(n: int, batch_size: int) -> int:
    """Full batches in a pass over ``n`` samples (the remainder is dropped, as
    ``drop_last=True`` does: a last batch of a few samples at a tuned lr could undo a pass,
    and the validation runs, on 5/6 of the data, had another remainder than the test runs);
    one batch of all of them when there are fewer than ``batch_size``."""
    return max(1, n // batch_size)


def _task_order(train_idx: Tensor, batch_size: int, steps: int,
                gen: torch.Generator) -> Iterator[Tensor]:
    """``steps`` batches of indices: passes over a fresh shuffle, each of
    :func:`_batches_per_pass` full batches, the last pass cut short."""
    n, done = len(train_idx), 0
    while done < steps:
        order = train_idx[torch.randperm(n, generator=gen)]
        for i in range(_batches_per_pass(n, batch_size)):
            if done == steps:
                return
            yield order[i * batch_size:(i + 1) * batch_size]
            done += 1


def _observe(method: Method, x: Tensor, y: Tensor, tids: Tensor, step: int) -> float:
    """``method.observe``; returns its host time on the run's first step (where a compiled
    path builds its kernels: kept out of the per-step time), else 0."""
    start = time.perf_counter() if step == 0 else 0.0
    method.observe(x, y, tids)
    return time.perf_counter() - start if step == 0 else 0.0


def _train_offline(cfg: BenchConfig, scen: Scenario, method: Method, device: torch.device,
                   gen: torch.Generator, rec: _Recorder) -> tuple[np.ndarray, float, int, float]:
    T = len(scen.tasks)
    R = np.zeros((T, T))
    step, busy, first = 0, 0.0, 0.0
    for t, task in enumerate(scen.tasks):
        n = len(task.train_idx)
        per_task = cfg.steps_per_task or cfg.epochs * _batches_per_pass(n, cfg.batch_size)
        eval_every = max(1, per_task // cfg.evals_per_task)
        _sync(device)
        start = time.perf_counter()
        method.begin_task(t)
        for idx in _task_order(task.train_idx, cfg.batch_size, per_task, gen):
            x, y = scen.train_batch(t, idx)
            x, y = x.to(device), y.to(device)
            first += _observe(method, x, y, torch.full((len(x),), t, device=device), step)
            step += 1
            if step % eval_every == 0 and step % per_task:
                _sync(device)
                busy += time.perf_counter() - start
                rec.accuracy(step, _evaluate(method, scen, device))
                rec.stability_point(step, method)
                start = time.perf_counter()
        method.end_task(t, _task_batches(scen, t, device))
        _sync(device)
        busy += time.perf_counter() - start
        R[t] = _evaluate(method, scen, device)
        rec.accuracy(step, R[t].tolist())
        rec.stability_point(step, method)
    return R, busy, step, first


def _train_stream(cfg: BenchConfig, scen: Scenario, method: Method, device: torch.device,
                  rec: _Recorder) -> tuple[np.ndarray, float, int, float, dict[str, Any]]:
    """No boundaries reach the method: strategies that consolidate do so every
    ``consolidate_every`` steps, on the last few batches (unaligned with the real switches)."""
    T = len(scen.tasks)
    R = np.zeros((T, T))
    step, busy, pseudo, first = 0, 0.0, 0, 0.0
    correct, before, after = [], [], []
    recent: deque = deque(maxlen=_CONSOLIDATE_BATCHES)
    window = max(1, cfg.stream_steps // _STREAM_WINDOWS)
    online_steps, online_acc = [], []
    method.begin_task(0)
    for t, task in enumerate(scen.tasks):
        for i in range(cfg.stream_steps):
            idx = task.train_idx[i * cfg.stream_batch:(i + 1) * cfg.stream_batch]
            x, y = scen.train_batch(t, idx)
            x, y = x.to(device), y.to(device)
            tids = torch.zeros(len(x), dtype=torch.long, device=device)
            with torch.no_grad():
                logits = method.logits(x, tids)
                correct.append(float((logits.argmax(1) == y).float().mean()))
                before.append(float(F.cross_entropy(logits, y)))
            _sync(device)
            start = time.perf_counter()
            first += _observe(method, x, y, tids, step)
            recent.append((x, y, tids))
            step += 1
            if step % cfg.consolidate_every == 0:
                snapshot = list(recent)
                method.end_task(pseudo, lambda snapshot=snapshot: iter(snapshot))
                pseudo += 1
                method.begin_task(pseudo)
            _sync(device)
            busy += time.perf_counter() - start
            with torch.no_grad():
                after.append(float(F.cross_entropy(method.logits(x, tids), y)))
            if step % window == 0:
                online_steps.append(step)
                online_acc.append(float(np.mean(correct[-window:])))
                rec.stability_point(step, method)
        R[t] = _evaluate(method, scen, device)
        rec.accuracy(step, R[t].tolist())
    online = {
        "online_acc": metrics.average_online_accuracy(correct),
        "plasticity": metrics.plasticity(before, after),
        "curve": {"step": online_steps, "acc": online_acc},
    }
    return R, busy, step, first, online


def _scenario(cfg: BenchConfig, name: str, seed: int) -> Scenario:
    data = load_dataset(cfg.dataset, cfg.data_dir)
    if cfg.eval_split == "val":
        data = validation_split(data)
    opts = ScenarioOptions(cfg.train_per_task, cfg.test_per_task, cfg.stream_steps,
                           cfg.stream_batch)
    # The task sequence depends on the seed only, so every method sees the same tasks.
    return build_scenario(name, data, cfg.n_tasks, np.random.default_rng(seed), opts,
                          DATASETS[cfg.dataset].sequence_tasks)


def run_cell(cfg: BenchConfig, scenario: str, method_name: str, seed: int) -> dict[str, Any]:
    """Train and evaluate one method on one scenario with one seed, on ``cfg.threads`` torch
    threads (the order of its sums: the numbers depend on it); return its record."""
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _run_cell(cfg, scenario, method_name, seed)
    finally:
        torch.set_num_threads(threads)


def _run_cell(cfg: BenchConfig, scenario: str, method_name: str, seed: int) -> dict[str, Any]:
    cfg = cfg.resolved()
    device = device_of(cfg.device)
    scen = _scenario(cfg, scenario, seed)
    torch.manual_seed(seed)
    model = build_model(cfg.model, tuple(scen.x_train.shape[1:]), scen.n_outputs, cfg.hidden)
    model.to(device)
    masks = scen.logit_masks()
    ctx = Context(
        n_outputs=scen.n_outputs,
        batch_size=cfg.stream_batch if scen.streaming else cfg.batch_size,
        masks=None if masks is None else masks.to(device),
        task_classes=None if scen.streaming else [t.classes for t in scen.tasks],
    )
    method = make_method(cfg.method_spec(method_name), model, ctx)
    b = _evaluate(method, scen, device)  # random-init accuracy, for FWT
    rec = _Recorder()
    gen = torch.Generator().manual_seed(seed)
    wall = time.perf_counter()
    if scen.streaming:
        R, busy, steps, first, online = _train_stream(cfg, scen, method, device, rec)
    else:
        (R, busy, steps, first), online = _train_offline(cfg, scen, method, device, gen,
                                                         rec), None
    n_params = sum(p.numel() for p in model.parameters())
    result = {
        "scenario": scenario, "method": method_name, "seed": seed,
        "metrics": {
            **metrics.matrix_metrics(R, b),
            **({} if online is None else {k: online[k] for k in ("online_acc", "plasticity")}),
            # the first step (a compiled path's build) apart from the per-step time
            "time_per_step_ms": 1000.0 * (busy - first) / max(steps - 1, 1),
            "first_step_ms": 1000.0 * first,
            "state_bytes_per_param": _state_bytes(method) / n_params,
            **_shifted(method),
        },
        "steps": steps,
        "wall_s": time.perf_counter() - wall,
        "n_params": n_params,
        "R": R.tolist(),
        "b": b,
        "curve": rec.to_dict(),
        "online_curve": None if online is None else online["curve"],
        "stability": rec.stability_dict(),
    }
    log.info("cell %s/%s/seed%d: acc=%.4f", scenario, method_name, seed,
             result["metrics"]["acc"])
    return result


# -- a whole run -----------------------------------------------------------------------------------


def _cells(cfg: BenchConfig) -> list[tuple[str, str, int]]:
    return list(product(cfg.scenarios, cfg.methods, cfg.seeds))


#: Keys every finished cell file has (what summarize and the reports read).
_CELL_KEYS = frozenset({"run_id", "scenario", "method", "seed", "metrics", "R"})


def _load_cell(path: Path, config_id: str) -> dict[str, Any] | None:
    """A finished cell of this run, or None (logged) if the file is damaged or another run's."""
    try:
        cell = json.loads(path.read_text())
    except (OSError, ValueError) as exc:  # ValueError: bad JSON or bytes that are not UTF-8
        log.warning("ignoring unreadable cell file %s (%s); recomputing that cell", path, exc)
        return None
    if not isinstance(cell, dict) or not cell.keys() >= _CELL_KEYS:
        log.warning("ignoring malformed cell file %s; recomputing that cell", path)
        return None
    return cell if cell["run_id"] == config_id else None


def run(config: BenchConfig, *, out_dir: str | Path = "runs", resume: bool = False,
        on_cell: Callable[[dict[str, Any], bool], None] | None = None,
        write_reports: bool = True, workers: int = 1) -> Results:
    """Run every cell of ``config`` and write ``<out_dir>/<run-id>/``.

    ``resume=True`` reuses cells already on disk for this run id (which hashes the config
    and the code identity, so cells of other code are never reused). ``on_cell(cell,
    cached)`` is called after each cell (for progress bars). ``write_reports`` writes
    results.json, results.csv, cells.csv and the plots. ``workers > 1`` runs cells in that
    many processes (each on ``config.threads`` torch threads, as here); the numbers do not
    depend on it.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    cfg = config.resolved()
    code = code_identity()
    run_id = config.run_id(code)
    run_dir = Path(out_dir) / run_id
    atomic_write_text(run_dir / "config.json",
                      json.dumps({**cfg.to_dict(), "code": code}, indent=2))
    done: dict[tuple[str, str, int], dict[str, Any]] = {}
    pending = []
    for key in _cells(cfg):
        path = run_dir / "cells" / f"{_cell_name(*key)}.json"
        cell = _load_cell(path, run_id) if resume and path.exists() else None
        if cell is None:
            pending.append(key)
        else:
            done[key] = cell
            if on_cell is not None:
                on_cell(cell, True)

    def finish(key: tuple[str, str, int], record: dict[str, Any]) -> None:
        cell = {"run_id": run_id, **record}
        atomic_write_text(run_dir / "cells" / f"{_cell_name(*key)}.json", json.dumps(cell))
        done[key] = cell
        if on_cell is not None:
            on_cell(cell, False)

    compute_cells(run_cell, (cfg,), pending, finish, workers)
    cells = [done[key] for key in _cells(cfg)]
    results = Results(cfg, run_id, run_dir, cells, summarize(cells))
    if write_reports:
        report.write_all(results)
    return results


def grid(config: BenchConfig, **axes: Iterable[Any]) -> list[BenchConfig]:
    """Every combination of ``axes`` applied to ``config``.

    Keys are config fields (``epochs=[1, 2]``) or, with ``__`` for a dot, keys of the
    dict fields: ``swgl_opts__alpha=[0.9, 0.99]`` or ``method_opts__ewc__lam=[10, 100]``.
    """
    names = list(axes)
    configs = []
    for values in product(*(list(axes[n]) for n in names)):
        d = config.to_dict()
        for name, value in zip(names, values):
            path = name.split("__")
            if path[0] not in d:
                raise ValueError(f"grid axis {name!r}: {path[0]!r} is not a BenchConfig field")
            target = d
            for part in path[:-1]:
                target[part] = dict(target.get(part) or {})
                target = target[part]
            target[path[-1]] = value
        configs.append(BenchConfig.from_dict(d))
    return configs
