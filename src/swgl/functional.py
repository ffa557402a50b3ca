"""Functional API: ``swgl(...)`` and ``swgl_after(...)`` pick a rule's variant (single,
foreach, fused) for its two phases (:mod:`swgl.rules.base`) and guard the state.

The guard is the same for every rule: if any gradient in the call is non-finite, nothing is
touched (neither state nor gradients), so a ``GradScaler`` that sees the same infs still skips
its step, and no inf or NaN can ever enter the state. On CUDA, rules that declare
``device_guard`` (v2 to v6, the default) are handed a device flag and mask on the device, with
no host sync; the seed's rules are checked on the host first (one sync). On the CPU every rule
is checked on the host, where the read costs no sync, and a step that applies runs unmasked.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor

from swgl import kernels
from swgl._validate import check_choice
from swgl.kernels import blocked, compiled
from swgl.options import MODES, SIGNALS, check_options, hyper
from swgl.rules import RULES, Context, Hyper, Variants
from swgl.rules.base import add_one_

__all__ = ["swgl", "swgl_after", "swgl_boundary", "all_finite", "found_nonfinite", "Outcome",
           "Plan", "plan", "run_before", "run_after", "MODES", "SIGNALS"]



class Outcome(NamedTuple):
    """What one call did. ``applied``: False when non-finite grads made it skip (on the CPU,
    or under the seed's rules), or, for a rule with a device guard on CUDA, a 0-d bool tensor
    (reading it syncs). ``aux``: what the rule's ``after`` phase needs in ``mode="update"``
    (v2/v3: per-param ``m``; v4: ``(k, grad)``; v5: ``(k, grad, skip flag)``; v6: ``(k, grad,
    Context)``), else None (and None for a step skipped on the host)."""

    applied: bool | Tensor
    aux: list[Tensor] | None = None


def found_nonfinite(tensors: list[Tensor]) -> Tensor:
    """A 1-element fp32 flag on the tensors' device: 1.0 if any element is inf or NaN (as
    torch's ``found_inf``); no host sync."""
    return (~torch.isfinite(_probes(tensors)).all()).float().reshape(1)


def _probes(tensors: list[Tensor]) -> Tensor:
    """Per-tensor values that are finite exactly when the tensor is, stacked on the first
    one's device: max-abs values in fp32 (one foreach launch), or on the CPU each tensor's
    min and max in their dtype (``torch.aminmax``: one pass, no copy; the CPU's foreach norm
    took 0.94 ms where this takes 0.08 on a 670K-param MLP's grads)."""
    if all(t.device.type == "cpu" for t in tensors):
        probes = [m for t in tensors if t.numel() for m in torch.aminmax(t)]
        if not probes:
            return torch.zeros(1)
        if len({m.dtype for m in probes}) > 1:
            probes = [m.float() for m in probes]
        return torch.stack(probes)   # one stack: each op costs some microseconds
    # an empty tensor is finite, and CUDA's foreach inf-norm raises on one (torch 2.11)
    device = tensors[0].device
    tensors = [t for t in tensors if t.numel()]
    if not tensors:
        return torch.zeros(1, device=device)
    norms = torch._foreach_norm(tensors, float("inf"))
    device = norms[0].device
    if len({(n.dtype, n.device) for n in norms}) == 1:  # one stack, no op per tensor
        return torch.stack(norms).float()
    return torch.stack([n.float().to(device) for n in norms])


def all_finite(tensors: list[Tensor]) -> bool:
    """True when every element of every tensor is finite (one host sync)."""
    if not tensors:
        return True
    return bool(torch.isfinite(_probes(tensors)).all())


class Plan(NamedTuple):
    """What a param group's phases run, picked once for its options and params
    (:func:`plan`): the rule's name, its options as the variants read them, and the variants
    of its two phases (``after`` None for a rule without one)."""

    rule: str
    hp: Hyper
    before: Callable
    after: Callable | None
    #: some param is a DTensor (FSDP2): the phases run per mesh bucket on local shards
    dtensor: bool


def plan(params: list[Tensor], rule: str, hp: Hyper, foreach: bool = True,
         fused: bool | None = None) -> Plan:
    """The variants :func:`swgl` and :func:`swgl_after` run for ``rule`` with the options
    ``hp`` (as a param group holds them: :func:`swgl.options.hyper`) on ``params`` (``foreach``
    and ``fused`` as :func:`swgl` takes them); the optimizer classes keep it per param group
    while the group's options and params stay the same, so that a step does not pick again."""
    check_choice("rule", rule, RULES)
    rule_ = RULES[rule]
    hp = rule_.hyper(hp)
    sharded, local = _shards(params)
    return Plan(rule, hp, _pick(rule_.before, rule, params, hp, foreach, fused),
                None if rule_.after is None else
                _pick(rule_.after, rule, local, hp, foreach, fused), sharded)


@torch.no_grad()
def swgl(
    params: list[Tensor],
    grads: list[Tensor],
    stabilities: list[Tensor],
    steps: list[Tensor],
    *,
    rule: str,
    alpha: float,
    lambda_reg: float,
    eps: float,
    max_boost: float,
    signal: str | None = None,
    max_damping: float | None = None,
    mode: str | None = None,
    shock: float = 0.0,
    consolidation: float | None = None,
    consolidation_horizon: float | None = None,
    grad_scale: float = 1.0,
    foreach: bool = True,
    fused: bool | None = None,
    extra_state: dict[str, list[Tensor]] | None = None,
) -> Outcome:
    """A rule's phase before the base step: update ``stabilities``, modulate ``grads`` in place
    (``mode="grad"``) and return what :func:`swgl_after` needs (``mode="update"``).

    ``stabilities`` are fp32 working tensors shaped like ``params`` (see :mod:`swgl.state`),
    ``extra_state`` the lists of the rule's further state tensors by name;
    ``steps`` are the per-tensor step counters, incremented here and only on calls that update
    the state. ``grad_scale`` is the loss scale the grads still carry. The math of each rule is
    in :mod:`swgl.rules`.

    ``fused`` picks the rule's Triton variant (one pass over the whole list): None (auto)
    uses it when ``foreach`` is set, every param is on CUDA and Triton is installed; True
    requires Triton; False never uses it. Tensors the kernels cannot take
    (non-contiguous, fp64, ...) fall back to foreach within the same call. On the CPU, v1's
    foreach runs over cache-sized chunks (:mod:`swgl.kernels.blocked`).

    The options are checked as the optimizers check them (:func:`swgl.options.check_options`:
    a ``ValueError`` or ``TypeError`` naming the option and its value); ``signal``, ``mode``
    and the consolidation's options left unset take the rule's own. The optimizer classes
    check once per change and call :func:`plan` and :func:`run_before` themselves.
    """
    group = dict(rule=rule, alpha=alpha, lambda_reg=lambda_reg, eps=eps, max_boost=max_boost,
                 signal=signal, max_damping=max_damping, mode=mode, shock=shock,
                 consolidation=consolidation, consolidation_horizon=consolidation_horizon)
    check_options(group, math_only=True)
    hp = hyper(group)
    if not params:
        return Outcome(True, [] if hp.mode == "update" else None)
    missing = [name for name, _ in RULES[rule].state[1:] if name not in (extra_state or {})]
    if missing:
        raise ValueError(f"rule {rule!r} keeps the state {missing} beside the stabilities: "
                         f"pass each as a list of tensors in extra_state")
    chosen = plan(params, rule, hp, foreach, fused)
    return run_before(chosen, params, grads, stabilities, steps, grad_scale, extra_state)


def run_before(chosen: Plan, params: list[Tensor], grads: list[Tensor],
               stabilities: list[Tensor], steps: list[Tensor], grad_scale: float = 1.0,
               extra_state: dict[str, list[Tensor]] | None = None) -> Outcome:
    """:func:`swgl` with its variant already picked (``chosen``: :func:`plan` for these
    params), under the caller's ``no_grad``: the guard, the step counters, the variant."""
    if not params:
        return Outcome(True, [] if chosen.hp.mode == "update" else None)
    rule_, hp, impl = RULES[chosen.rule], chosen.hp, chosen.before
    state = {"stability": stabilities, **(extra_state or {})}
    if chosen.dtensor:
        return _swgl_dtensor(params, grads, state, steps, hp, impl, grad_scale)
    if rule_.device_guard and not compiled.runs_on(grads[0].device):
        if impl is rule_.before.fused and rule_.fused_checks:
            # the variant sets the flag in its own kernels before it reads it (and reads no
            # step counter): no separate pass over the grads
            found = torch.zeros(1, device=grads[0].device)
            aux = impl(params, grads, state, steps, hp,
                       Context(grad_scale, found=found, check=found_nonfinite))
            _count_steps(steps, found)
        else:
            found = found_nonfinite(grads)
            _count_steps(steps, found)
            aux = impl(params, grads, state, steps, hp, Context(grad_scale, found=found))
        return Outcome(found.reshape(()) == 0, aux)
    # the seed's rules, and every rule on the CPU, where a host read costs no sync and spares
    # the masked commits of a device flag; a foreach variant with a guard of its own reads
    # what that guard took from the grads (v4: their squares) instead of a pass of this one
    guard = rule_.host_guard if impl is rule_.before.foreach else None
    checked = None if guard is None else guard(grads, grad_scale)
    if checked is None and not all_finite(grads):
        return Outcome(False)
    add_one_(steps)
    return Outcome(True, impl(params, grads, state, steps, hp,
                              Context(grad_scale, squares=checked)))


def _count_steps(steps: list[Tensor], found: Tensor) -> None:
    applies = (1.0 - found).reshape(()).to(steps[0].device)  # steps live on the device
    torch._foreach_add_(steps, [applies] * len(steps))


def _pick(variants: Variants, rule: str, params, hp: Hyper, foreach: bool, fused: bool | None):
    """The variant a call runs: fused (Triton on CUDA, compiled on the CPU for the rules that
    declare ``cpu_fused``), cache-blocked foreach (CPU), foreach or single."""
    cpu_fused = RULES[rule].cpu_fused and bool(params) and compiled.runs_on(params[0].device)
    if fused is None:
        fused = foreach and variants.fused is not None and (
            compiled.worth_it(params) and kernels.supports(hp) if cpu_fused
            else kernels.can_fuse(params, hp))
    elif fused and cpu_fused and not compiled.available():
        raise RuntimeError("fused=True on the CPU needs torch.compile and a C++ compiler "
                           "(apt install g++)")
    elif fused and not cpu_fused and not kernels.triton_available():
        raise RuntimeError("fused=True needs a CUDA device and Triton (pip install triton)")
    if fused:
        if variants.fused is None or not kernels.supports(hp):
            raise ValueError(
                f"fused=True: no kernel for rule {rule!r} with these options ({hp}); "
                "use fused=None or False"
            )
        return variants.fused
    if foreach and rule in blocked.DEFAULT_RULES and blocked.worth_it(params):
        return blocked.BLOCKED[rule]  # CPU: the same foreach, over cache-sized chunks
    return variants.foreach if foreach else variants.single


@torch.no_grad()
def swgl_after(
    params: list[Tensor],
    snapshots: list[Tensor] | None,
    stabilities: list[Tensor],
    steps: list[Tensor],
    aux: list[Tensor] | None,
    *,
    rule: str,
    hp: Hyper,
    foreach: bool = True,
    fused: bool | None = None,
    extra_state: dict[str, list[Tensor]] | None = None,
) -> None:
    """A rule's phase after the base optimizer's step (``mode="update"``: rescale the update),
    with the ``aux`` that :func:`swgl` returned and, for rules that need them, ``snapshots``
    of the params taken before the base step; ``hp`` holds the options :func:`swgl` took
    (:func:`swgl.options.hyper` builds it from a param group). ``aux`` None (the step was
    skipped on the host for non-finite grads: :attr:`Outcome.applied` False) does nothing."""
    check_choice("rule", rule, RULES)
    if RULES[rule].after is None or not params or aux is None:
        return
    run_after(plan(params, rule, hp, foreach, fused), params, snapshots, stabilities, steps,
              aux, extra_state)


def run_after(chosen: Plan, params: list[Tensor], snapshots: list[Tensor] | None,
              stabilities: list[Tensor], steps: list[Tensor], aux: list[Tensor] | None,
              extra_state: dict[str, list[Tensor]] | None = None) -> None:
    """:func:`swgl_after` with its variant already picked (``chosen``: :func:`plan` for these
    params), under the caller's ``no_grad``."""
    impl = chosen.after
    if impl is None or not params or aux is None:
        return
    state = {"stability": stabilities, **(extra_state or {})}
    if not chosen.dtensor:
        impl(params, snapshots, state, steps, aux, chosen.hp, Context())
        return
    local = [_local(t) for t in params]
    state = {name: [_local(t) for t in ts] for name, ts in state.items()}
    # the same buckets as the before phase, so that sums over shards complete there too
    for idx, ctx in _bucket_contexts(params, 1.0):
        impl(_pick_at(local, idx), None if snapshots is None else _pick_at(snapshots, idx),
             {name: _pick_at(ts, idx) for name, ts in state.items()}, _pick_at(steps, idx),
             _pick_at(aux, idx), chosen.hp, ctx)


def swgl_boundary(
    params: list[Tensor],
    stabilities: list[Tensor],
    *,
    rule: str,
    hp: Hyper,
    extra_state: dict[str, list[Tensor]] | None = None,
) -> None:
    """What a task boundary the user names does to a rule's state (``on_task_boundary()``),
    for a rule that defines it (:attr:`swgl.rules.base.Rule.boundary`: v5 to v7 consolidate
    as at a detected shift); on DTensor shards, with the same sums over shards as the
    phases'."""
    check_choice("rule", rule, RULES)
    boundary = RULES[rule].boundary
    if boundary is None:
        raise ValueError(f"rule {rule!r} defines no task boundary (its state restarts instead)")
    if not params:
        return
    hp = RULES[rule].hyper(hp)
    state = {"stability": stabilities, **(extra_state or {})}
    dtensor = _dtensor_type()
    if dtensor is None or not any(isinstance(p, dtensor) for p in params):
        boundary(params, state, hp, Context())
        return
    local = [_local(t) for t in params]
    state = {name: [_local(t) for t in ts] for name, ts in state.items()}
    for idx, ctx in _bucket_contexts(params, 1.0):
        boundary(_pick_at(local, idx), {name: _pick_at(ts, idx) for name, ts in state.items()},
                 hp, ctx)


def _pick_at(xs: list, idx: list[int]) -> list:
    return [xs[i] for i in idx]


def _bucket_contexts(params: list[Tensor], grad_scale: float) -> list[tuple[list[int], Context]]:
    """The params' indices per (mesh, placements) bucket, each with the Context whose sums
    are all-reduced over the bucket's sharded mesh dims and whose numels are global."""
    dtensor = _dtensor_type()
    buckets: dict[object, list[int]] = {}
    for i, p in enumerate(params):
        key = (p.device_mesh, tuple(p.placements)) if isinstance(p, dtensor) else None
        buckets.setdefault(key, []).append(i)
    out = []
    for key, idx in buckets.items():
        ctx = Context(grad_scale=grad_scale)
        if key is not None:
            ctx = Context(
                grad_scale=grad_scale,
                reduce_sum=partial(_all_reduce, groups=_mesh_groups(*key),
                                   op=torch.distributed.ReduceOp.SUM),
                numels=tuple(params[i].numel() for i in idx),
            )
        out.append((idx, ctx))
    return out


def _shards(params: list[Tensor]) -> tuple[bool, list[Tensor]]:
    """(whether some param is a DTensor, the params' local shards): the after phase picks
    its variant on what it runs on."""
    dtensor = _dtensor_type()
    if dtensor is None or not any(isinstance(p, dtensor) for p in params):
        return False, params
    return True, [_local(t) for t in params]


def _local(t: Tensor) -> Tensor:
    """A DTensor's local shard (the rules run on shards), else ``t``."""
    return t.to_local() if hasattr(t, "to_local") else t


# -- DTensor (FSDP2, tensor parallel): the rules run on local shards ---------------------------


def _dtensor_type() -> type | None:
    """DTensor's class if it was ever imported (else no DTensor can exist): no import cost."""
    return getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)


def _mesh_groups(mesh, placements=None) -> list:
    """The process groups of ``mesh``'s dims (only the sharded dims if ``placements``)."""
    dims = range(mesh.ndim) if placements is None else (
        d for d, pl in enumerate(placements) if pl.is_shard()
    )
    return [mesh.get_group(d) for d in dims]


def _all_reduce(t: Tensor, groups: list, op) -> Tensor:
    for group in groups:
        torch.distributed.all_reduce(t, op=op, group=group)
    return t


def _swgl_dtensor(params, grads, state, steps, hp, impl, grad_scale) -> Outcome:
    """Run ``impl`` once per (mesh, placements) bucket on the local shards.

    Per-tensor sums are all-reduced over the sharded mesh dims and ``numels`` are global, so
    every rank computes what one process would on the full tensors. The non-finite guard is
    all-reduced too: one rank's inf skips the step on every rank, and the state stays in step.
    """
    dtensor = _dtensor_type()
    buckets: dict[object, list[int]] = {}
    stabilities = state["stability"]
    for i, (p, g, s) in enumerate(zip(params, grads, stabilities)):
        key = (p.device_mesh, tuple(p.placements)) if isinstance(p, dtensor) else None
        for name, t in (("grad", g), ("stability", s)):
            t_key = (t.device_mesh, tuple(t.placements)) if isinstance(t, dtensor) else None
            if t_key != key:
                raise ValueError(
                    f"params[{i}]'s {name} must be laid out like the param ({key}), got "
                    f"{t_key}: under FSDP2/DTensor only storage formats whose state is shaped "
                    "like the param work (docs/distributed.md)"
                )
        if key is not None and any(pl.is_partial() for pl in key[1]):
            raise ValueError(f"params[{i}] has a Partial placement; SWGL needs Shard/Replicate")
        buckets.setdefault(key, []).append(i)

    def local(t: Tensor) -> Tensor:
        return t.to_local() if isinstance(t, dtensor) else t

    grads_local = [local(g) for g in grads]
    bad = torch.tensor(0.0 if all_finite(grads_local) else 1.0, device=grads_local[0].device)
    for mesh in dict.fromkeys(key[0] for key in buckets if key is not None):
        _all_reduce(bad, _mesh_groups(mesh), torch.distributed.ReduceOp.MAX)
    if bad.item():
        return Outcome(False)
    for step in steps:
        step.add_(1)
    aux: list[Tensor | None] = [None] * len(params)
    for idx, ctx in _bucket_contexts(params, grad_scale):
        bucket_aux = impl(
            [local(params[i]) for i in idx], [grads_local[i] for i in idx],
            {name: [local(ts[i]) for i in idx] for name, ts in state.items()},
            [steps[i] for i in idx], hp, ctx,
        )
        for i, m in zip(idx, bucket_aux or ()):
            aux[i] = m
    return Outcome(True, aux if hp.mode == "update" else None)
