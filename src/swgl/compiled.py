"""The rules through ``torch.compile``, compiled once over the whole list of params.

:data:`COMPILED` maps a rule name to an implementation with the rules' signature
``impl(params, grads, stabilities, steps, hp, ctx)``. The body is a plain per-tensor loop over
the whole list, compiled as one graph (compiling per tensor would pay Python overhead per
call), so Inductor fuses each tensor's ops into a few kernels and launches them from one
wrapper. The first call compiles (seconds to minutes for hundreds of tensors); a new list
layout (other shapes or dtypes) or other options recompile. Calls with sharded tensors
(``ctx.numels`` or a custom ``ctx.reduce_sum``) take the foreach implementation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from swgl.rules import _TINY, R_MAX, RULES, WEIGHT_FLOOR, Context, Hyper

__all__ = ["COMPILED"]


def _v1_body(params, grads, stabilities, alpha, eps, max_boost, lam_scaled, scale, paper):
    for p, g, s in zip(params, grads, stabilities):
        true_g = g if scale == 1.0 else g / scale
        s.copy_(s * alpha + (true_g.abs() / (p.abs() + eps)) * (1.0 - alpha))
        c = 1.0 / s.clamp(max=max_boost) if paper else (1.0 / (s + eps)).clamp(max=max_boost)
        new_g = g * c
        if lam_scaled > 0.0:
            new_g = new_g + p * (s - 1.0).clamp(min=0.0) * lam_scaled
        g.copy_(new_g)


def _v2_body(params, grads, stabilities, inv_bc: Tensor, alpha, eps, max_boost, lam, scale):
    for i, (p, g, s) in enumerate(zip(params, grads, stabilities)):
        w = p.float()
        g32 = g.float() / scale
        delta = eps + WEIGHT_FLOOR * w.square().mean().sqrt()
        r = (g32.abs() / (w.abs() + delta)).clamp(max=R_MAX)
        s_new = s * alpha + r * (1.0 - alpha)
        s.copy_(s_new)
        s_hat = s_new * inv_bc[i]
        active = s_hat > 0
        count = active.sum()
        total = torch.where(active, s_hat, 1.0).log().sum()
        m = torch.where(count > 0, total / count.clamp(min=1), 0.0).exp()
        c = (m / (s_hat + _TINY)).clamp(1.0 / max_boost, max_boost)
        new_g = g32 * c
        if lam > 0.0:
            new_g = new_g + lam * (s_hat / (m + _TINY) - 1.0).clamp(0.0, max_boost - 1.0) * w
        g.copy_(new_g * scale)


#: torch.compile backend ("eager" traces without generating code: quick CPU tests)
BACKEND = "inductor"


@functools.cache
def _compile(body: Callable, backend: str) -> Callable:
    return torch.compile(body, backend=backend, fullgraph=True, dynamic=False)


def _compiled(body: Callable) -> Callable:
    return _compile(body, BACKEND)


def _sharded(ctx: Context) -> bool:
    return ctx.numels is not None or ctx.reduce_sum is not Context().reduce_sum


def _v1(params, grads, stabilities, steps, hp: Hyper, ctx: Context, *, paper: bool) -> None:
    _compiled(_v1_body)(params, grads, stabilities, hp.alpha, hp.eps, hp.max_boost,
                        hp.lambda_reg * ctx.grad_scale, ctx.grad_scale, paper)


def _v2(params, grads, stabilities, steps, hp: Hyper, ctx: Context) -> None:
    if _sharded(ctx):
        RULES["v2"].foreach(params, grads, stabilities, steps, hp, ctx)
        return
    inv_bc = torch.tensor([1.0 / (1.0 - hp.alpha ** int(t)) for t in steps],
                          dtype=torch.float32).to(params[0].device, non_blocking=True)
    _compiled(_v2_body)(params, grads, stabilities, inv_bc, hp.alpha, hp.eps, hp.max_boost,
                        hp.lambda_reg, ctx.grad_scale)


#: rule name -> compiled implementation (same signature as ``RULES[name].foreach``)
COMPILED: dict[str, Callable[..., None]] = {
    "v1": partial(_v1, paper=False),
    "v1-paper": partial(_v1, paper=True),
    "v2": _v2,
}
