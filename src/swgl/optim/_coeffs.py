r"""Each rule as a pair of coefficients, for the optimizers' foreach fallback.

Every rule in :mod:`swgl.rules` maps a gradient to :math:`c \odot g + k \odot w` once its EMA
is updated. ``coeffs(params, grads, stabilities, steps, hp, ctx)`` updates the EMA in place
and returns the lists ``c`` and ``k`` (``k`` is None when ``lambda_reg`` is 0), so a fused
optimizer can apply the factor to the gradient (mode ``"grad"``: exactly the rule) or to the
base optimizer's update (mode ``"update"``). Tests check ``c * g + k * w`` against
``RULES[name].single``; the Triton kernels compute the same pair inline.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from swgl.rules import Context, Hyper, v2_coefficients

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


#: rule name -> coefficient function (same arguments as the rules)
COEFFS: dict[str, Callable[..., Coeffs]] = {
    "v1": partial(_v1, paper=False),
    "v1-paper": partial(_v1, paper=True),
    "v2": v2_coefficients,
}
