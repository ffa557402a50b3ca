"""SWGL under ``torch.distributed``: a consistency check and an opt-in state sync.

When does SWGL's state need a sync? It is an elementwise function of ``(w, g)`` plus
per-tensor sums, so ranks that see the same ``w`` and ``g`` keep bit-identical state:

=============================================================  ==================================
setup                                                          state across ranks
=============================================================  ==================================
DDP, SWGL steps after ``backward()``                           identical: grads are all-reduced
                                                               before SWGL reads them
DDP + ``no_sync()`` accumulation, SWGL steps after the last    identical: the last backward
(synced) backward                                              all-reduces the accumulated grads
SWGL steps inside ``no_sync()`` (every micro-batch), local     **diverges**: each rank reads its
SGD, post-local SGD, DiLoCo, federated averaging               own grads; use :class:`StateSync`
FSDP2 (``fully_shard``): DTensor params                        sharded like the params: each rank
                                                               owns its shard, nothing to sync
=============================================================  ==================================

:func:`check_consistency` tells which case a run is in; :class:`StateSync` averages the state
every ``K`` steps for the cases that diverge: every tensor the rule keeps (the stability and,
under v5 to v7, the importance, the anchor, SI's path and the shift detector). Averaging is
exact for the EMA itself: the EMA is linear in the relative impact, so the average of the
ranks' EMAs is the EMA of the ranks' averaged impacts, whatever ``K``; between syncs each rank
modulates with its own estimate.

FSDP2 needs torch >= 2.6 (``torch.distributed.fsdp.fully_shard``), and
:mod:`swgl.functional` runs the rules on the local shards of DTensors (torch >= 2.5).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from swgl.base import SWGLBase

__all__ = ["ConsistencyReport", "StateSync", "check_consistency", "average_state"]

log = logging.getLogger(__name__)

#: Integer views for a bitwise comparison (NCCL reduces no int16: it is widened).
_INT_VIEW = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@dataclass(frozen=True)
class ConsistencyReport:
    """What :func:`check_consistency` found; the same on every rank."""

    #: every compared tensor is bitwise equal on every rank
    identical: bool
    #: the largest ``max - min`` across ranks over all compared elements
    max_abs_diff: float
    #: names of the tensors that differ somewhere
    mismatched: tuple[str, ...]
    #: how many tensors were compared
    compared: int
    #: sharded DTensor state, owned by one rank per shard and so not compared
    sharded: int


def _check_optimizer(optimizer: Any) -> None:
    if not isinstance(optimizer, SWGLBase):
        raise TypeError(
            f"optimizer must be an SWGL or SWGLWrapper (swgl.optim's optimizers are not "
            f"covered: docs/distributed.md), got {type(optimizer).__name__}"
        )


def _is_sharded(t: Tensor) -> bool:
    placements = getattr(t, "placements", None)  # DTensor without importing it
    return placements is not None and any(pl.is_shard() for pl in placements)


def _local(t: Tensor) -> Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _collective_device(group: Any) -> torch.device:
    backend = str(dist.get_backend(group))
    if "nccl" in backend and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _state_tensors(optimizer: SWGLBase, names: dict[int, str], with_params: bool):
    """(name, tensor) for SWGL's state (and the params), in ``param_groups`` order."""
    index = 0
    for g, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            base = names.get(id(p), f"param_groups[{g}][{index}]")
            index += 1
            if with_params:
                yield base, p.detach()
            state = optimizer.state.get(p, {})
            # every tensor the rule keeps (v5 to v7: the importance, the anchor, the path and
            # the detector besides the stability), the step counter last
            for key in sorted(state):
                if key != "step":
                    yield f"{base}.{key}", state[key]
            if "step" in state:
                yield f"{base}.step", state["step"]


def check_consistency(
    optimizer: SWGLBase,
    group: Any = None,
    *,
    named_params: Iterable[tuple[str, Tensor]] | None = None,
    params: bool = False,
) -> ConsistencyReport:
    """Compare SWGL's state bitwise across the ranks of ``group`` (a collective call).

    Every rank must call it at the same point. Plain tensors and replicated DTensors are
    compared; sharded DTensor state (FSDP2) belongs to one rank per shard and is counted in
    ``sharded`` instead. ``named_params`` (e.g. ``model.named_parameters()``) names the
    tensors in the report; ``params=True`` compares the params themselves too. It costs a
    copy of the compared state, one all-reduce for the layout and four per dtype: a
    diagnostic, not a per-step call.
    """
    _check_optimizer(optimizer)
    names = {id(p): name for name, p in (named_params or ())}
    device = _collective_device(group)
    compared: list[tuple[str, Tensor]] = []
    sharded = 0
    for name, t in _state_tensors(optimizer, names, params):
        if _is_sharded(t):
            sharded += 1
        else:
            compared.append((name, _local(t).detach()))
    # Ranks that disagree on what to compare would deadlock below: compare the layout first.
    numel = sum(t.numel() for _, t in compared)
    layout = torch.tensor([len(compared), -len(compared), numel, -numel], device=device)
    dist.all_reduce(layout, op=dist.ReduceOp.MAX, group=group)
    if int(layout[0]) != -int(layout[1]) or int(layout[2]) != -int(layout[3]):
        return ConsistencyReport(False, float("inf"), ("<state layout>",), len(compared), sharded)

    mismatched: list[str] = []
    max_diff = 0.0
    by_dtype: dict[torch.dtype, list[tuple[str, Tensor]]] = {}
    for name, t in compared:
        by_dtype.setdefault(t.dtype, []).append((name, t))
    for entries in by_dtype.values():  # same order on every rank: the layout matched
        flat = torch.cat([t.reshape(-1).to(device) for _, t in entries])
        bits = flat.view(_INT_VIEW[flat.element_size()])
        if bits.dtype == torch.int16:
            bits = bits.to(torch.int32)
        hi, lo = bits.clone(), bits.clone()
        dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=group)
        dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=group)
        differs = (hi != lo).split([t.numel() for _, t in entries])
        mismatched += [name for (name, _), d in zip(entries, differs) if bool(d.any())]
        v_hi, v_lo = flat.double(), flat.double()
        dist.all_reduce(v_hi, op=dist.ReduceOp.MAX, group=group)
        dist.all_reduce(v_lo, op=dist.ReduceOp.MIN, group=group)
        if flat.numel():
            max_diff = max(max_diff, float((v_hi - v_lo).nan_to_num(float("inf")).max()))
    report = ConsistencyReport(
        not mismatched, max_diff, tuple(mismatched), len(compared), sharded
    )
    if mismatched:
        log.warning(
            "SWGL state differs across ranks in %d of %d tensors (max diff %.3g), e.g. %s",
            len(mismatched), len(compared), max_diff, mismatched[0],
        )
    return report


@torch.no_grad()
def average_state(optimizer: SWGLBase, group: Any = None) -> int:
    """Average SWGL's state over the ranks of ``group`` (a collective call).

    The stability goes through its storage as fp32 (:mod:`swgl.state`), so every format is
    averaged in fp32 and stored back in its own format; the rule's other per-element state
    (v5 to v7: the importance, the anchor, SI's path) is averaged as it is. The shift
    detector ``[t, f, q, t_last]`` (v5 to v7) takes the mean of its EMAs ``f`` and ``q`` and
    the largest ``t`` and ``t_last``: a shift one rank found counts for all, and no rank is set
    back to a step it has passed. Sharded DTensor state is skipped (each rank owns its
    shard). Returns the number of tensors averaged.
    """
    _check_optimizer(optimizer)
    world = dist.get_world_size(group)
    device = _collective_device(group)
    entries, plain, detectors = [], [], []
    for pg in optimizer.param_groups:
        storage = optimizer._storage(pg)
        extra = optimizer._extra_names(pg)
        for p in pg["params"]:
            state = optimizer.state.get(p)
            if not state or "step" not in state or _is_sharded(p):
                continue
            entries.append((storage, state, _local(storage.load(state, p))))
            for name in extra:
                (detectors if name == "detector" else plain).append(_local(state[name]))
    if not entries:
        return 0
    tensors = [w for *_, w in entries] + plain
    flat = torch.cat([t.reshape(-1).to(device) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
    flat.div_(world)
    averaged = flat.split([t.numel() for t in tensors])
    for (storage, state, working), avg in zip(entries, averaged):
        working.copy_(avg.view_as(working))
        storage.store(state, working)
    for t, avg in zip(plain, averaged[len(entries):]):
        t.copy_(avg.view_as(t))
    if detectors:
        rows = torch.stack(detectors).to(device)
        mean, latest = rows.clone(), rows.clone()
        dist.all_reduce(mean, op=dist.ReduceOp.SUM, group=group)
        dist.all_reduce(latest, op=dist.ReduceOp.MAX, group=group)
        rows = latest
        rows[:, 1:3] = mean[:, 1:3] / world
        for det, row in zip(detectors, rows):
            det.copy_(row)
    return len(tensors) + len(detectors)


class StateSync:
    """Average SWGL's state across ranks every ``every`` steps of ``optimizer``.

    For the setups where ranks read different grads (SWGL inside ``no_sync()``, local SGD,
    post-local SGD, DiLoCo): set ``every`` to the period of the parameter averaging, so the
    state is synced with the weights. Under plain DDP or FSDP2 it is not needed (see
    :mod:`swgl.distributed`). It attaches through ``register_step_post_hook``, so it syncs
    after ``optimizer.step()`` returns; :meth:`remove` detaches it, :meth:`sync` syncs now.
    """

    def __init__(self, optimizer: SWGLBase, every: int, group: Any = None) -> None:
        _check_optimizer(optimizer)
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an int >= 1, got {every!r}")
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("StateSync needs an initialised process group (init_process_group)")
        self.optimizer = optimizer
        self.every = every
        self.group = group
        self.steps = 0
        self._handle = optimizer.register_step_post_hook(self._after_step)

    def _after_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self.steps += 1
        if self.steps % self.every == 0:
            self.sync()

    def sync(self) -> int:
        """Average the state now (a collective call); the number of tensors averaged."""
        return average_state(self.optimizer, self.group)

    def remove(self) -> None:
        """Stop syncing."""
        self._handle.remove()
