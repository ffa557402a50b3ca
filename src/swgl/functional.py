"""Functional API: ``swgl(...)`` picks a rule and an implementation and guards the state.

The guard is the same for every rule: if any gradient in the call is non-finite, nothing is
touched (neither state nor gradients), so a ``GradScaler`` that sees the same infs still skips
its step, and no inf or NaN can ever enter the stability state.
"""

from __future__ import annotations

import sys
from functools import partial
from typing import NamedTuple

import torch
from torch import Tensor

from swgl import kernels
from swgl._validate import check_choice
from swgl.kernels import blocked
from swgl.rules import RULES, Context, Hyper

__all__ = ["swgl", "all_finite", "Outcome", "MODES", "SIGNALS"]

#: Where the factor applies: to the gradient, or to the update the base optimizer makes.
MODES = ("grad", "update")
#: What the EMA tracks (see :mod:`swgl.rules`).
SIGNALS = ("relative", "utility", "fisher")


class Outcome(NamedTuple):
    """What one call did: ``applied`` is False when non-finite grads made it skip; ``factors``
    are the per-tensor factors to apply to the base optimizer's update (``mode="update"``)."""

    applied: bool
    factors: list[Tensor] | None = None


def all_finite(tensors: list[Tensor]) -> bool:
    """True when every element of every tensor is finite (one host sync)."""
    if not tensors:
        return True
    norms = torch._foreach_norm(tensors, float("inf"))
    device = norms[0].device
    return bool(torch.isfinite(torch.stack([n.float().to(device) for n in norms])).all())


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
    signal: str = "relative",
    max_damping: float | None = None,
    mode: str = "grad",
    shock: float = 0.0,
    grad_scale: float = 1.0,
    foreach: bool = True,
    fused: bool | None = None,
) -> Outcome:
    """Modulate ``grads`` in place (or return update factors) and update ``stabilities``.

    ``stabilities`` are fp32 working tensors shaped like ``params`` (see :mod:`swgl.state`);
    ``steps`` are the per-tensor step counters, incremented here and only on calls that update
    the state. ``grad_scale`` is the loss scale the grads still carry. The math of each rule is
    in :mod:`swgl.rules`.

    ``fused`` picks the Triton kernels of :mod:`swgl.kernels` (one pass over the whole list):
    None (auto) uses them when ``foreach`` is set, every param is on CUDA and Triton is
    installed; True requires Triton; False never uses them. Tensors the kernels cannot take
    (non-contiguous, fp64, ...) fall back to foreach within the same call. On the CPU, v1's
    foreach runs over cache-sized chunks (:mod:`swgl.kernels.blocked`).
    """
    check_choice("rule", rule, RULES)
    if not params:
        return Outcome(True, [] if mode == "update" else None)
    hp = Hyper(
        alpha=alpha, lambda_reg=lambda_reg, eps=eps, max_boost=max_boost, signal=signal,
        max_damping=max_damping, mode=mode, shock=shock,
    )
    impl = RULES[rule].foreach if foreach else RULES[rule].single
    if fused is None:
        fused = foreach and kernels.can_fuse(rule, params, hp)
    elif fused and not kernels.triton_available():
        raise RuntimeError("fused=True needs a CUDA device and Triton (pip install triton)")
    if fused:
        if rule not in kernels.FUSED or not kernels.supports(hp):
            raise ValueError(
                f"fused=True: no kernel for rule {rule!r} with these options ({hp}); "
                "use fused=None or False"
            )
        impl = kernels.FUSED[rule]
    elif foreach and rule in blocked.DEFAULT_RULES and blocked.worth_it(params):
        impl = blocked.BLOCKED[rule]  # CPU: the same foreach, over cache-sized chunks
    dtensor = _dtensor_type()
    if dtensor is not None and any(isinstance(p, dtensor) for p in params):
        return _swgl_dtensor(params, grads, stabilities, steps, hp, impl, grad_scale)
    if not all_finite(grads):
        return Outcome(False)
    for step in steps:
        step.add_(1)
    return Outcome(True, impl(params, grads, stabilities, steps, hp, Context(grad_scale)))


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


def _swgl_dtensor(params, grads, stabilities, steps, hp, impl, grad_scale) -> Outcome:
    """Run ``impl`` once per (mesh, placements) bucket on the local shards.

    Per-tensor sums are all-reduced over the sharded mesh dims and ``numels`` are global, so
    every rank computes what one process would on the full tensors. The non-finite guard is
    all-reduced too: one rank's inf skips the step on every rank, and the state stays in step.
    """
    dtensor = _dtensor_type()
    buckets: dict[object, list[int]] = {}
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
    factors: list[Tensor | None] = [None] * len(params)
    for key, idx in buckets.items():
        ctx = Context(grad_scale=grad_scale)
        if key is not None:
            groups = _mesh_groups(*key)
            ctx = Context(
                grad_scale=grad_scale,
                reduce_sum=partial(_all_reduce, groups=groups, op=torch.distributed.ReduceOp.SUM),
                numels=tuple(params[i].numel() for i in idx),
            )
        bucket_factors = impl(
            [local(params[i]) for i in idx], [grads_local[i] for i in idx],
            [local(stabilities[i]) for i in idx], [steps[i] for i in idx], hp, ctx,
        )
        for i, c in zip(idx, bucket_factors or ()):
            factors[i] = c
    return Outcome(True, factors if hp.mode == "update" else None)
