"""Triton kernel launches for the rules' ``fused`` variants (Triton is an optional dependency).

A rule module's ``fused`` variant calls :func:`run_fused` / :func:`run_fused_after` with its
own foreach variant: the tensors the kernels handle go to Triton, a few launches per
(device, dtype) group whatever the number of tensors, and the rest to foreach, so any input
works:

* handled: CUDA params and grads of fp32, bf16 or fp16, fp32 state, all contiguous and
  non-empty;
* the rest (non-contiguous views, fp64, CPU tensors, ...) take the rule's foreach;
* options the kernels do not implement (``shock``) take foreach for the whole call.

Triton is imported on the first fused call, never at ``import swgl``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import itertools
import operator
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from swgl.rules.base import Context, Hyper

__all__ = ["run_fused", "run_fused_after", "triton_available", "runs_on", "can_fuse",
           "supports", "fusable_tensor", "cached_plan", "launches_for", "hold_plans", "hold"]

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_KNOWN_HYPER = frozenset({"alpha", "lambda_reg", "eps", "max_boost", "signal", "max_damping",
                          "mode", "consolidation", "consolidation_horizon"})
# (v5 applies its pull, faded or not, outside v4's kernels)
# Triton's interpreter runs the kernels on CPU tensors: lets the kernels be debugged anywhere
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    """True when Triton is installed and a CUDA device (or its CPU interpreter) can run it."""
    installed = importlib.util.find_spec("triton") is not None
    return installed and (torch.cuda.is_available() or _INTERPRET)


def runs_on(device: torch.device) -> bool:
    """True when the kernels can run on tensors of ``device``."""
    return triton_available() and (device.type == "cuda" or _INTERPRET)


def supports(hp: Hyper) -> bool:
    """True when every option in ``hp`` is one the kernels implement."""
    for field in dataclasses.fields(hp):
        if field.name not in _KNOWN_HYPER and getattr(hp, field.name) != field.default:
            return False
    return True


#: what the kernels take: plain tensors and params, never a subclass such as DTensor (its
#: data_ptr is its local shard's)
_PLAIN = (Tensor, torch.nn.Parameter)


def fusable_tensor(p: Tensor, g: Tensor, s: Tensor) -> bool:
    """True when the kernels can take this (param, grad, stability) triple."""
    return (
        type(p) in _PLAIN
        and type(g) in _PLAIN
        and p.dtype in _DTYPES
        and g.dtype in _DTYPES
        and s.dtype == torch.float32
        and p.is_contiguous()
        and g.is_contiguous()
        and s.is_contiguous()
        and p.numel() > 0
        and (p.is_cuda or _INTERPRET)
        and p.device == g.device == s.device
    )


def can_fuse(params: Sequence[Tensor], hp: Hyper | None = None) -> bool:
    """Whether ``fused=None`` (auto) picks the Triton path for this call."""
    return (
        bool(params)
        and (_INTERPRET or all(map(_IS_CUDA, params)))
        and (hp is None or supports(hp))
        and triton_available()
    )


_IS_CUDA = operator.attrgetter("is_cuda")
_DTYPE = operator.attrgetter("dtype")
_PLANS: OrderedDict[tuple, Any] = OrderedDict()
#: plans kept: two per param group (before and after phase) of a few optimizers
_MAX_PLANS = 64
#: the lists :func:`hold_plans` fills (one per capture in progress)
_HELD: list[list[Any]] = []


@contextlib.contextmanager
def hold_plans() -> Iterator[list[Any]]:
    """A list of every plan looked up inside (:func:`cached_plan`, :func:`launches_for`'s
    tables and their device tensors), for whoever keeps a CUDA graph captured inside
    (:class:`swgl.graphs.PhaseGraph`) to keep as long as the graph.

    Why: a captured kernel reads its launch tables (``Launch.ptrs``, the block maps) by their
    device addresses at every replay, but their only owner is the LRU above, which drops an
    entry after :data:`_MAX_PLANS` newer ones (another optimizer, or one whose state is
    replaced at every step, makes several a step; replays look nothing up). The freed tables'
    memory is then reused and the replayed kernels load garbage pointers: an illegal memory
    access on the GPU, which ends the process's CUDA context. Triton's interpreter (CPU) has
    no graphs, so it never showed there."""
    held: list[Any] = []
    _HELD.append(held)
    try:
        yield held
    finally:
        _HELD.remove(held)


def hold(*objs: Any) -> None:
    """Keep ``objs`` (the tensors a step reads and writes outside any launch table: step
    counters, device scalars, state) for as long as the CUDA graphs captured now
    (:func:`hold_plans`; nothing outside a capture). A replay reads them by address: should
    their owner drop them (a state replaced behind the graph's back), the replay then writes
    into memory that is still theirs, not into memory reused for something else."""
    for held in _HELD:
        held.extend(objs)


def cached_plan(name: object, fixed: Sequence[Sequence[Tensor]],
                volatile: Sequence[Sequence[Tensor]], build: Callable[[], Any]) -> Any:
    """``build()``, reused while the tensors are alike: the same addresses for the ``fixed``
    lists (params, state), the same dtypes for all, every tensor contiguous.

    The ``volatile`` lists (grads, snapshots) are fresh tensors at each step, so their
    addresses are not part of the key: the caller re-addresses the plan when they moved.
    A fused call splits its lists into launch groups and builds their tables; doing that
    per tensor at every step cost milliseconds of host time on a BERT-sized model. The key
    reads each tensor's address and dtype, and the first list's sizes (the params': the
    other lists are shaped like them), through C-level maps. The sizes matter: a param
    freed (another model, another test in the same process) leaves its address to the
    caching allocator, which may hand it to a param of another size, whose kernels would
    then read and write past its end with the old tables (a device fault, which ends the
    process's CUDA context). Lists with a non-contiguous tensor are never cached.
    """
    every = list(itertools.chain(*fixed, *volatile))
    if not all(map(Tensor.is_contiguous, every)):
        plan = build()
        for held in _HELD:   # not cached: a graph captured now must keep it (hold_plans)
            held.append(plan)
        return plan
    first = fixed[0] if fixed else volatile[0] if volatile else ()
    key = (name, tuple(map(len, (*fixed, *volatile))), every[0].device if every else None,
           tuple(map(Tensor.data_ptr, itertools.chain(*fixed))), tuple(map(_DTYPE, every)),
           tuple(map(Tensor.numel, first)))
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = build()
        if len(_PLANS) > _MAX_PLANS:
            _PLANS.popitem(last=False)
    else:
        _PLANS.move_to_end(key)
    for held in _HELD:   # a graph captured now reads its tables (hold_plans)
        held.append(plan)
    return plan


def launches_for(name: str, lists: list[list[Tensor]], volatile: tuple[int, ...],
                 split: Callable[[], tuple[list[list[int]], list[int]]] | None = None):
    """``(groups, rest, tables)``: the launch groups of ``lists`` (index lists), the indices
    the kernels cannot take, and each group's tables
    (:class:`swgl.kernels.triton_swgl.Launch`).

    ``split()`` makes the groups (default: one group of every index). All of it is reused
    while the tensors are alike (:func:`cached_plan`); the tables are pointed anew at the
    lists whose indices are in ``volatile`` (grads, snapshots) when those moved.
    """
    moving = [lists[i] for i in volatile]
    fixed = [xs for i, xs in enumerate(lists) if i not in volatile]

    def build() -> list:
        groups, rest = split() if split is not None else ([list(range(len(lists[0])))], [])
        if not groups:
            return [groups, rest, [], ()]
        from swgl.kernels import triton_swgl  # imports Triton

        tables = [triton_swgl.Launch([_subset(xs, idx) for xs in lists]) for idx in groups]
        return [groups, rest, tables, _addresses(moving)]

    entry = cached_plan(name, fixed, moving, build)
    groups, rest, tables, seen = entry
    if tables:
        addresses = _addresses(moving)
        if addresses != seen:
            for idx, lau in zip(groups, tables):
                lau.readdress([_subset(xs, idx) for xs in lists])
            entry[3] = addresses
    for held in _HELD:   # the tables as a graph captured now reads them (readdress swaps
        # them), and the tensors they point to: should their owner drop one, the replays must
        # not write into its memory once reused
        held.append((lists, [(lau.ptrs, lau.blocks, lau.numels, lau.first, lau.gnumels,
                              lau.steps) for lau in tables]))
    return groups, rest, tables


def _addresses(lists: Sequence[Sequence[Tensor]]) -> tuple[int, ...]:
    return tuple(map(Tensor.data_ptr, itertools.chain(*lists)))


def _subset(xs: Sequence, idx: list[int]) -> list:
    return [xs[i] for i in idx]


def split(params, grads, stabilities, extra: Sequence[Sequence[Tensor]] = (),
          buffers: Sequence[Sequence[Tensor]] = ()):
    """Indices of the fusable tensors grouped by (device, param dtype, grad dtype, buffer
    dtype), and the rest.

    ``extra`` lists further per-param tensors (v5's anchors) that must also be contiguous fp32
    on the same device; ``buffers`` the optimizer's buffers, contiguous on the same device and
    of one dtype per param, fp32 or the param's (torch's optimizers keep theirs so).
    """
    groups: dict[tuple, list[int]] = {}
    rest: list[int] = []
    for i, (p, g, s) in enumerate(zip(params, grads, stabilities)):
        dtypes = {b[i].dtype for b in buffers}
        ok = fusable_tensor(p, g, s) and all(
            b[i].dtype == torch.float32 and b[i].is_contiguous() and b[i].device == p.device
            for b in extra
        ) and dtypes <= {torch.float32, p.dtype} and len(dtypes) <= 1 and all(
            b[i].is_contiguous() and b[i].device == p.device and b[i].shape == p.shape
            for b in buffers
        )
        if ok:
            groups.setdefault((p.device, p.dtype, g.dtype, *dtypes), []).append(i)
        else:
            rest.append(i)
    return groups, rest


def sub_context(ctx: Context, idx: list[int]) -> Context:
    numels = None if ctx.numels is None else tuple(ctx.numels[i] for i in idx)
    return dataclasses.replace(ctx, numels=numels)


def run_fused(rule: str, foreach: Callable, params, grads, state, steps, hp: Hyper,
              ctx: Context):
    """A rule's ``before`` phase: Triton for the tensors it takes, ``foreach`` for the rest.

    Returns what the rule's ``before`` returns (per-param ``m`` in ``mode="update"``).
    """
    stabilities = state["stability"]
    if not supports(hp):
        return foreach(params, grads, state, steps, hp, ctx)
    groups, rest = split(params, grads, stabilities)
    aux: list[Tensor | None] = [None] * len(params)
    if rest:
        out = foreach(*(_subset(xs, rest) for xs in (params, grads)),
                      {"stability": _subset(stabilities, rest)}, _subset(steps, rest),
                      hp, sub_context(ctx, rest))
        for i, m in zip(rest, out or ()):
            aux[i] = m
    if groups:
        from swgl.kernels import triton_swgl

        for idx in groups.values():
            out = triton_swgl.swgl_pass(
                *(_subset(xs, idx) for xs in (params, grads, stabilities, steps)),
                hp, sub_context(ctx, idx), rule=rule,
            )
            for i, m in zip(idx, out or ()):
                aux[i] = m
    return aux if hp.mode == "update" else None


def run_fused_after(foreach: Callable, params, snapshots, state, steps, aux, hp: Hyper,
                    ctx: Context) -> None:
    """A rule's ``after`` phase: Triton for the tensors it takes, ``foreach`` for the rest."""
    stabilities = state["stability"]
    groups, rest = split(params, snapshots, stabilities)
    if rest:
        foreach(*(_subset(xs, rest) for xs in (params, snapshots)),
                {"stability": _subset(stabilities, rest)},
                *(_subset(xs, rest) for xs in (steps, aux)), hp, sub_context(ctx, rest))
    if groups:
        from swgl.kernels import triton_swgl

        for idx in groups.values():
            triton_swgl.rescale_pass(
                *(_subset(xs, idx) for xs in (params, snapshots, stabilities, steps, aux)), hp,
            )
