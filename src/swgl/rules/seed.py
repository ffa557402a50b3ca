r"""``v1`` and ``v1-paper``: the seed's rules, op for op (bit-exact with its reference code).

For each element, with :math:`S` the loss scale the grads still carry (1 when unscaled)::

    r = |g / S| / (|w| + eps)                     # relative impact
    s = alpha * s + (1 - alpha) * r               # s starts at 1
    c = min(1 / (s + eps), max_boost)             # v1 (the seed's code)
    c = 1 / min(s, max_boost)                     # v1-paper (the seed's README formula)
    g = c * g + S * lambda_reg * max(s - 1, 0) * w

``v1-paper``'s boost is unbounded and its damping capped. Both act on the gradient only
(``mode="grad"``); ``signal``, ``shock`` and ``max_damping`` mean nothing to them.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from swgl.rules.base import Context, Hyper, Rule, Variants

__all__ = ["V1", "V1_PAPER"]


def _single(params, grads, state, steps, hp: Hyper, ctx: Context, *, paper: bool) -> None:
    scale = ctx.grad_scale
    for p, g, s in zip(params, grads, state["stability"]):
        true_g = g if scale == 1.0 else g / scale
        relative_impact = true_g.abs() / (p.abs() + hp.eps)
        s.mul_(hp.alpha).add_(relative_impact, alpha=1.0 - hp.alpha)
        if paper:
            g.div_(s.clamp(max=hp.max_boost))
        else:
            lr_scaler = 1.0 / (s + hp.eps)
            lr_scaler.clamp_(max=hp.max_boost)
            g.mul_(lr_scaler)
        if hp.lambda_reg > 0.0:
            excess = (s - 1.0).clamp(min=0.0)
            g.add_(p * excess * (hp.lambda_reg * scale))


def _foreach(params, grads, state, steps, hp: Hyper, ctx: Context, *, paper: bool) -> None:
    scale = ctx.grad_scale
    stabilities = state["stability"]
    true_g = grads if scale == 1.0 else torch._foreach_div(grads, scale)
    impact = torch._foreach_abs(true_g)
    denom = torch._foreach_abs(params)
    torch._foreach_add_(denom, hp.eps)
    torch._foreach_div_(impact, denom)
    del denom
    torch._foreach_mul_(stabilities, hp.alpha)
    torch._foreach_add_(stabilities, impact, alpha=1.0 - hp.alpha)
    del impact
    if paper:
        torch._foreach_div_(grads, torch._foreach_clamp_max(stabilities, hp.max_boost))
    else:
        lr_scaler = torch._foreach_add(stabilities, hp.eps)
        torch._foreach_reciprocal_(lr_scaler)
        torch._foreach_clamp_max_(lr_scaler, hp.max_boost)
        torch._foreach_mul_(grads, lr_scaler)
        del lr_scaler
    if hp.lambda_reg > 0.0:
        excess = torch._foreach_sub(stabilities, 1.0)
        torch._foreach_clamp_min_(excess, 0.0)
        penalty = torch._foreach_mul(params, excess)
        torch._foreach_mul_(penalty, hp.lambda_reg * scale)
        torch._foreach_add_(grads, penalty)


def _fused(params, grads, state, steps, hp: Hyper, ctx: Context, *, paper: bool) -> None:
    from swgl import kernels

    name = "v1-paper" if paper else "v1"
    kernels.run_fused(name, partial(_foreach, paper=paper), params, grads, state, steps, hp, ctx)


def _factor(s: Tensor, step: int, hp: Hyper, group_mean: Tensor | float | None = None, *,
            paper: bool) -> tuple[Tensor, Tensor]:
    """``(s, c)`` for :mod:`swgl.stats` (elementwise: ``group_mean`` is not read)."""
    return s, (1.0 / s.clamp(max=hp.max_boost) if paper
               else (1.0 / (s + hp.eps)).clamp_(max=hp.max_boost))


_OPTIONS = frozenset({"alpha", "lambda_reg", "eps", "max_boost", "mode"})


def _rule(name: str, paper: bool) -> Rule:
    return Rule(
        name=name,
        before=Variants(partial(_single, paper=paper), partial(_foreach, paper=paper),
                        partial(_fused, paper=paper)),
        options=_OPTIONS,
        state=(("stability", 1.0),),
        factor=partial(_factor, paper=paper),
        kernel=name,
    )


V1 = _rule("v1", paper=False)
V1_PAPER = _rule("v1-paper", paper=True)
