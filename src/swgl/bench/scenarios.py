"""Scenarios: how a dataset is cut into a sequence of tasks (or a stream of segments).

A :class:`Task` holds *indices* into the shared train/eval tensors plus an input and a label
transform, so permuted or rotated copies are made batch by batch, never stored whole.

* ``permuted`` / ``rotated``: domain-IL, one shared 10-way head, a new pixel permutation
  (rotation angle) per task; task 0 is the original data.
* ``split-task`` / ``split-domain`` / ``split-class``: classes cut into disjoint groups (0-1,
  2-3, ...); task-IL masks the logits to the task's classes, domain-IL relabels every task to
  0..k-1 on a k-way head, class-IL uses one head over all classes with no mask.
* ``stream-input-permuted`` / ``stream-label-permuted``: UPGD-style streams with no task
  boundaries; a new input permutation (label permutation) every ``stream_steps`` batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from swgl.bench.data import ArrayData

__all__ = ["SCENARIOS", "Scenario", "ScenarioInfo", "ScenarioOptions", "Task", "build_scenario"]

Transform = Callable[[Tensor], Tensor]


def _identity(t: Tensor) -> Tensor:
    return t


@dataclass
class Task:
    train_idx: Tensor           # indices into Scenario.x_train; the order of a stream
    eval_idx: Tensor            # indices into Scenario.x_eval
    classes: Tensor             # output columns this task uses (task-IL mask, LwF heads)
    x_fn: Transform = _identity
    y_fn: Transform = _identity


@dataclass
class Scenario:
    name: str
    x_train: Tensor
    y_train: Tensor
    x_eval: Tensor
    y_eval: Tensor
    tasks: list[Task]
    n_outputs: int
    task_masked: bool = False   # task-IL: logits masked to the task's classes
    streaming: bool = False     # no boundaries; online accuracy is the headline metric
    _eval_cache: dict[int, tuple[Tensor, Tensor]] = field(default_factory=dict, repr=False)

    def train_batch(self, t: int, idx: Tensor) -> tuple[Tensor, Tensor]:
        task = self.tasks[t]
        return task.x_fn(self.x_train[idx]), task.y_fn(self.y_train[idx])

    def eval_set(self, t: int) -> tuple[Tensor, Tensor]:
        if t not in self._eval_cache:
            task = self.tasks[t]
            self._eval_cache[t] = (task.x_fn(self.x_eval[task.eval_idx]),
                                   task.y_fn(self.y_eval[task.eval_idx]))
        return self._eval_cache[t]

    def logit_masks(self) -> Tensor | None:
        """(T, n_outputs) additive masks (0 on the task's classes, -inf elsewhere), or None."""
        if not self.task_masked:
            return None
        masks = torch.full((len(self.tasks), self.n_outputs), float("-inf"))
        for t, task in enumerate(self.tasks):
            masks[t, task.classes] = 0.0
        return masks


@dataclass(frozen=True)
class ScenarioOptions:
    """Sizes shared by every builder (None = use everything available)."""

    train_per_task: int | None = None
    test_per_task: int | None = None
    stream_steps: int = 500     # batches per stream segment
    stream_batch: int = 16


@dataclass(frozen=True)
class ScenarioInfo:
    build: Callable[..., Scenario]
    split: bool = False     # tasks = class groups (default n_classes / 2), else transformed copies
    streaming: bool = False


def _subset(pool: np.ndarray, n: int | None, rng: np.random.Generator) -> Tensor:
    if n is not None and n < len(pool):
        pool = rng.choice(pool, size=n, replace=False)
    return torch.from_numpy(np.sort(pool)).long()


def _permute_fn(perm: Tensor) -> Transform:
    def fn(x: Tensor) -> Tensor:
        return x.flatten(1)[:, perm].view_as(x)
    return fn


def _rotate_fn(degrees: float) -> Transform:
    theta = math.radians(degrees)
    rot = torch.tensor([[math.cos(theta), -math.sin(theta), 0.0],
                        [math.sin(theta), math.cos(theta), 0.0]])

    def fn(x: Tensor) -> Tensor:
        grid = F.affine_grid(rot.expand(len(x), 2, 3), list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, align_corners=False)
    return fn


def _relabel_fn(mapping: Tensor) -> Transform:
    def fn(y: Tensor) -> Tensor:
        return mapping[y]
    return fn


def _base(name: str, data: ArrayData, tasks: list[Task], n_out: int, *, task_masked: bool = False,
          streaming: bool = False) -> Scenario:
    return Scenario(name, data.x_train, data.y_train, data.x_test, data.y_test, tasks, n_out,
                    task_masked=task_masked, streaming=streaming)


def _transformed(name: str, make_fn: Callable[[int, np.random.Generator], Transform]):
    def build(data: ArrayData, n_tasks: int, rng: np.random.Generator,
              opts: ScenarioOptions) -> Scenario:
        train_pool, eval_pool = np.arange(len(data.y_train)), np.arange(len(data.y_test))
        all_classes = torch.arange(data.n_classes)
        tasks = [
            Task(_subset(train_pool, opts.train_per_task, rng),
                 _subset(eval_pool, opts.test_per_task, rng), all_classes, make_fn(t, rng))
            for t in range(n_tasks)
        ]
        return _base(name, data, tasks, data.n_classes)
    return build


def _perm_transform(t: int, rng: np.random.Generator, n_features: int) -> Transform:
    if t == 0:
        return _identity
    return _permute_fn(torch.from_numpy(rng.permutation(n_features)).long())


def _build_permuted(data: ArrayData, n_tasks: int, rng: np.random.Generator,
                    opts: ScenarioOptions) -> Scenario:
    n_features = int(np.prod(data.shape))
    make = lambda t, r: _perm_transform(t, r, n_features)  # noqa: E731
    return _transformed("permuted", make)(data, n_tasks, rng, opts)


def _build_rotated(data: ArrayData, n_tasks: int, rng: np.random.Generator,
                   opts: ScenarioOptions) -> Scenario:
    # Angles spread evenly over [0, 180): task 0 is upright.
    make = lambda t, r: _rotate_fn(180.0 * t / n_tasks) if t else _identity  # noqa: E731
    return _transformed("rotated", make)(data, n_tasks, rng, opts)


def _split(setting: str):
    def build(data: ArrayData, n_tasks: int, rng: np.random.Generator,
              opts: ScenarioOptions) -> Scenario:
        k = data.n_classes // n_tasks
        if k < 2:
            raise ValueError(
                f"n_tasks={n_tasks} leaves fewer than 2 of the {data.n_classes} classes per task"
            )
        tasks = []
        for t in range(n_tasks):
            classes = torch.arange(t * k, (t + 1) * k)
            cls = classes.numpy()
            train = _subset(np.flatnonzero(np.isin(data.y_train.numpy(), cls)),
                            opts.train_per_task, rng)
            test = _subset(np.flatnonzero(np.isin(data.y_test.numpy(), cls)),
                           opts.test_per_task, rng)
            if setting == "domain":
                # Every task reuses the k-way head: class t*k + i becomes label i.
                mapping = torch.arange(data.n_classes) - t * k
                tasks.append(Task(train, test, torch.arange(k), y_fn=_relabel_fn(mapping)))
            else:
                tasks.append(Task(train, test, classes))
        n_out = k if setting == "domain" else data.n_classes
        return _base(f"split-{setting}", data, tasks, n_out, task_masked=setting == "task")
    return build


def _stream(kind: str):
    def build(data: ArrayData, n_tasks: int, rng: np.random.Generator,
              opts: ScenarioOptions) -> Scenario:
        n_features = int(np.prod(data.shape))
        eval_pool = np.arange(len(data.y_test))
        all_classes = torch.arange(data.n_classes)
        tasks = []
        for t in range(n_tasks):
            # Each segment draws fresh samples (with replacement) in stream order.
            n = opts.stream_steps * opts.stream_batch
            order = torch.from_numpy(rng.integers(0, len(data.y_train), n))
            test = _subset(eval_pool, opts.test_per_task, rng)
            if kind == "input":
                x_fn = _perm_transform(t, rng, n_features)
                tasks.append(Task(order.long(), test, all_classes, x_fn=x_fn))
            else:
                mapping = torch.arange(data.n_classes) if t == 0 else torch.from_numpy(
                    rng.permutation(data.n_classes)).long()
                tasks.append(Task(order.long(), test, all_classes, y_fn=_relabel_fn(mapping)))
        return _base(f"stream-{kind}-permuted", data, tasks, data.n_classes, streaming=True)
    return build


SCENARIOS: dict[str, ScenarioInfo] = {
    "permuted": ScenarioInfo(_build_permuted),
    "rotated": ScenarioInfo(_build_rotated),
    "split-task": ScenarioInfo(_split("task"), split=True),
    "split-domain": ScenarioInfo(_split("domain"), split=True),
    "split-class": ScenarioInfo(_split("class"), split=True),
    "stream-input-permuted": ScenarioInfo(_stream("input"), streaming=True),
    "stream-label-permuted": ScenarioInfo(_stream("label"), streaming=True),
}


def build_scenario(name: str, data: ArrayData, n_tasks: int | None, rng: np.random.Generator,
                   opts: ScenarioOptions, sequence_tasks: int = 10) -> Scenario:
    """Build scenario ``name`` with ``n_tasks`` tasks.

    ``n_tasks=None`` means n_classes / 2 for split scenarios, else ``sequence_tasks``.
    """
    if name not in SCENARIOS:
        raise ValueError(f"scenario must be one of {sorted(SCENARIOS)}, got {name!r}")
    info = SCENARIOS[name]
    default = data.n_classes // 2 if info.split else sequence_tasks
    n = default if n_tasks is None else n_tasks
    if n < 1:
        raise ValueError(f"n_tasks must be >= 1, got {n}")
    return info.build(data, n, rng, opts)
