r"""Each rule as a pair of coefficients, for the optimizers' foreach fallback.

Every rule in :mod:`swgl.rules` maps a gradient to :math:`c \odot g + k \odot w` once its EMA
is updated. ``coeffs(params, grads, stabilities, steps, hp, ctx)`` updates the EMA in place
and returns the lists ``c`` and ``k`` (``k`` is None when ``lambda_reg`` is 0), so a fused
optimizer can apply the factor to the gradient (mode ``"grad"``: exactly the rule) or to the
base optimizer's update (mode ``"update"``). Tests check ``c * g + k * w`` against
``RULES[name].single``; the Triton kernels compute the same pair inline.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from swgl.rules import _TINY, R_MAX, WEIGHT_FLOOR, Context, Hyper, _log_means, _tensor_sums

Coeffs = tuple[list[Tensor], list[Tensor] | None]


def _v1(params, grads, stabilities, steps, hp: Hyper, ctx: Context, *, paper: bool) -> Coeffs:
    true_g = grads if ctx.grad_scale == 1.0 else torch._foreach_div(grads, ctx.grad_scale)
    impact = torch._foreach_abs(true_g)
    denom = torch._foreach_abs(params)
    torch._foreach_add_(denom, hp.eps)
    torch._foreach_div_(impact, denom)
    torch._foreach_mul_(stabilities, hp.alpha)
    torch._foreach_add_(stabilities, impact, alpha=1.0 - hp.alpha)
    if paper:
        c = torch._foreach_clamp_max(stabilities, hp.max_boost)
        torch._foreach_reciprocal_(c)
    else:
        c = torch._foreach_add(stabilities, hp.eps)
        torch._foreach_reciprocal_(c)
        torch._foreach_clamp_max_(c, hp.max_boost)
    k = None
    if hp.lambda_reg > 0.0:
        k = torch._foreach_sub(stabilities, 1.0)
        torch._foreach_clamp_min_(k, 0.0)
        torch._foreach_mul_(k, hp.lambda_reg * ctx.grad_scale)
    return c, k


def _v2(params, grads, stabilities, steps, hp: Hyper, ctx: Context) -> Coeffs:
    numels = [ctx.numel(i, p) for i, p in enumerate(params)]
    w = [p.float() for p in params]
    g32 = [g.float() for g in grads]
    if ctx.grad_scale != 1.0:
        g32 = torch._foreach_div(g32, ctx.grad_scale)
    if hp.signal == "relative":
        w_sq = _tensor_sums(w, 2, ctx)
        delta = [hp.eps + WEIGHT_FLOOR * (sq / n) ** 0.5 for sq, n in zip(w_sq, numels)]
        denom = torch._foreach_abs(w)
        torch._foreach_add_(denom, delta)
        r = torch._foreach_abs(g32)
        torch._foreach_div_(r, denom)
        del denom
    elif hp.signal == "utility":
        r = torch._foreach_mul(g32, w)
        torch._foreach_abs_(r)
    else:  # "fisher"
        r = torch._foreach_mul(g32, g32)
    torch._foreach_clamp_max_(r, R_MAX)
    torch._foreach_mul_(stabilities, hp.alpha)
    torch._foreach_add_(stabilities, r, alpha=1.0 - hp.alpha)
    del r
    inv_bc = [1.0 / (1.0 - hp.alpha ** int(t.item())) for t in steps]
    s_hat = torch._foreach_mul(stabilities, inv_bc)
    means = [math.exp(log_m) for log_m in _log_means(s_hat, ctx)]
    c = torch._foreach_add(s_hat, _TINY)
    torch._foreach_reciprocal_(c)
    torch._foreach_mul_(c, means)
    torch._foreach_clamp_min_(c, hp.min_scale)
    torch._foreach_clamp_max_(c, hp.max_boost)
    k = None
    if hp.lambda_reg > 0.0:
        k = torch._foreach_mul(s_hat, [1.0 / (m + _TINY) for m in means])
        torch._foreach_sub_(k, 1.0)
        torch._foreach_clamp_min_(k, 0.0)
        torch._foreach_clamp_max_(k, hp.max_boost - 1.0)
        torch._foreach_mul_(k, hp.lambda_reg * ctx.grad_scale)
    return c, k


#: rule name -> coefficient function (same arguments as the rules)
COEFFS: dict[str, Callable[..., Coeffs]] = {
    "v1": partial(_v1, paper=False),
    "v1-paper": partial(_v1, paper=True),
    "v2": _v2,
}
