"""Functional API: ``swgl(...)`` picks a rule and an implementation and guards the state.

The guard is the same for every rule: if any gradient in the call is non-finite, nothing is
touched (neither state nor gradients), so a ``GradScaler`` that sees the same infs still skips
its step, and no inf or NaN can ever enter the stability state.
"""

from __future__ import annotations

import torch
from torch import Tensor

from swgl._validate import check_choice
from swgl.rules import RULES, Context, Hyper

__all__ = ["swgl", "all_finite"]


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
    grad_scale: float = 1.0,
    foreach: bool = True,
) -> bool:
    """Modulate ``grads`` in place and update ``stabilities``; return False if skipped.

    ``stabilities`` are fp32 working tensors shaped like ``params`` (see :mod:`swgl.state`);
    ``steps`` are the per-tensor step counters, incremented here and only on calls that update
    the state. ``grad_scale`` is the loss scale the grads still carry. The math of each rule is
    in :mod:`swgl.rules`.
    """
    check_choice("rule", rule, RULES)
    if not params:
        return True
    if not all_finite(grads):
        return False
    for step in steps:
        step.add_(1)
    hp = Hyper(alpha=alpha, lambda_reg=lambda_reg, eps=eps, max_boost=max_boost)
    ctx = Context(grad_scale=grad_scale)
    impl = RULES[rule].foreach if foreach else RULES[rule].single
    impl(params, grads, stabilities, steps, hp, ctx)
    return True
