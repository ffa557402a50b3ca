r"""The math of each SWGL rule, as pure functions over lists of tensors.

Every rule has two implementations with one signature:

* ``single``: a per-tensor loop, the readable reference;
* ``foreach``: the same ops through ``torch._foreach_*``, a few kernel launches per step.

Both modify ``grads`` and ``stabilities`` in place and return nothing. They never see how the
state is stored: ``stabilities`` are float tensors the caller loaded from storage (fp32 by
default) and stores back afterwards. ``grad_scale`` is the loss scale :math:`S` the grads
still carry (1 when they are unscaled); the statistics always see :math:`g/S`, and the
modulated gradient stays in the caller's units.

Rules
-----
``v1`` (the seed's reference code, bit-exact)::

    r = |g| / (|w| + eps)
    s = alpha * s + (1 - alpha) * r              # s starts at 1
    g = g * min(1 / (s + eps), max_boost)
    g = g + lambda_reg * clamp(s - 1, min=0) * w

``v1-paper`` (the formula in the seed's README): as ``v1`` but
``g = g / clamp(s, max=max_boost)``, so the boost is unbounded and the damping is capped.

``v2`` (bounded, the safe default), for each tensor at finite step ``t``::

    delta = eps + floor * rms(w)                 # a weight floor relative to the tensor
    r     = min(|g| / (|w| + delta), R_MAX)
    s     = alpha * s + (1 - alpha) * r           # s starts at 0
    s_hat = s / (1 - alpha^t)                     # bias-corrected, no start-up transient
    m     = mean(s_hat)                           # per-tensor reference level
    c     = clamp((m + tiny) / (s_hat + tiny), 1 / max_boost, max_boost)
    g     = c * g + lambda_reg * clamp(s_hat / m - 1, 0, max_boost - 1) * w

so an element as volatile as its tensor's average gets ``c = 1``; a more volatile one is
damped, down to ``1/max_boost``; a steadier one is boosted, up to ``max_boost``. ``lambda_reg``
is a weight decay applied only to elements more volatile than their tensor's mean, with a
coefficient that never exceeds ``lambda_reg * (max_boost - 1)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

#: Ceiling on v2's relative impact: keeps the EMA finite for any finite gradient.
R_MAX = 1e20
#: v2's weight floor, as a fraction of the tensor's RMS.
WEIGHT_FLOOR = 1e-3
_TINY = 1e-30


@dataclass(frozen=True)
class Rule:
    """A rule's two implementations and the value its stability state starts at."""

    name: str
    single: Callable[..., None]
    foreach: Callable[..., None]
    init_value: float
    bias_corrected: bool


# --------------------------------------------------------------------------------------------
# v1 and v1-paper: the seed's formulas, op for op.
# --------------------------------------------------------------------------------------------


def _v1_single(params, grads, stabilities, steps, *, alpha, lambda_reg, eps, max_boost,
               grad_scale, paper):
    for p, g, s in zip(params, grads, stabilities):
        true_g = g if grad_scale == 1.0 else g / grad_scale
        relative_impact = true_g.abs() / (p.abs() + eps)
        s.mul_(alpha).add_(relative_impact, alpha=1.0 - alpha)
        if paper:
            g.div_(s.clamp(max=max_boost))
        else:
            lr_scaler = 1.0 / (s + eps)
            lr_scaler.clamp_(max=max_boost)
            g.mul_(lr_scaler)
        if lambda_reg > 0.0:
            excess = (s - 1.0).clamp(min=0.0)
            g.add_(p * excess * (lambda_reg * grad_scale) if grad_scale != 1.0
                   else p * excess * lambda_reg)


def _v1_foreach(params, grads, stabilities, steps, *, alpha, lambda_reg, eps, max_boost,
                grad_scale, paper):
    true_g = grads if grad_scale == 1.0 else torch._foreach_div(grads, grad_scale)
    impact = torch._foreach_abs(true_g)
    denom = torch._foreach_abs(params)
    torch._foreach_add_(denom, eps)
    torch._foreach_div_(impact, denom)
    del denom
    torch._foreach_mul_(stabilities, alpha)
    torch._foreach_add_(stabilities, impact, alpha=1.0 - alpha)
    del impact
    if paper:
        torch._foreach_div_(grads, torch._foreach_clamp_max(stabilities, max_boost))
    else:
        scaler = torch._foreach_add(stabilities, eps)
        torch._foreach_reciprocal_(scaler)
        torch._foreach_clamp_max_(scaler, max_boost)
        torch._foreach_mul_(grads, scaler)
        del scaler
    if lambda_reg > 0.0:
        excess = torch._foreach_sub(stabilities, 1.0)
        torch._foreach_clamp_min_(excess, 0.0)
        penalty = torch._foreach_mul(params, excess)
        torch._foreach_mul_(penalty, lambda_reg * grad_scale if grad_scale != 1.0
                            else lambda_reg)
        torch._foreach_add_(grads, penalty)


def _v1_single_ref(*args, **kwargs):
    _v1_single(*args, paper=False, **kwargs)


def _v1_foreach_ref(*args, **kwargs):
    _v1_foreach(*args, paper=False, **kwargs)


def _v1_single_paper(*args, **kwargs):
    _v1_single(*args, paper=True, **kwargs)


def _v1_foreach_paper(*args, **kwargs):
    _v1_foreach(*args, paper=True, **kwargs)


# --------------------------------------------------------------------------------------------
# v2: bounded, bias-corrected, normalised per tensor.
# --------------------------------------------------------------------------------------------


def _bias_corrections(steps: list[Tensor], alpha: float) -> list[float]:
    return [1.0 - alpha ** int(t.item()) for t in steps]


def _v2_single(params, grads, stabilities, steps, *, alpha, lambda_reg, eps, max_boost,
               grad_scale):
    for p, g, s, step in zip(params, grads, stabilities, steps):
        w = p.float()
        g32 = g.float() if grad_scale == 1.0 else g.float() / grad_scale
        delta = eps + WEIGHT_FLOOR * w.square().mean().sqrt()
        r = (g32.abs() / (w.abs() + delta)).clamp_(max=R_MAX)
        s.mul_(alpha).add_(r, alpha=1.0 - alpha)
        s_hat = s / (1.0 - alpha ** int(step.item()))
        m = s_hat.mean()
        c = ((m + _TINY) / (s_hat + _TINY)).clamp_(1.0 / max_boost, max_boost)
        new_g = g32.mul_(c)
        if lambda_reg > 0.0:
            excess = (s_hat / (m + _TINY) - 1.0).clamp_(0.0, max_boost - 1.0)
            new_g.add_(excess.mul_(w), alpha=lambda_reg)
        if grad_scale != 1.0:
            new_g.mul_(grad_scale)
        g.copy_(new_g)


def _v2_foreach(params, grads, stabilities, steps, *, alpha, lambda_reg, eps, max_boost,
                grad_scale):
    n = len(params)
    w = [p.float() for p in params]
    g32 = [g.float() for g in grads]
    if grad_scale != 1.0:
        g32 = torch._foreach_div(g32, grad_scale)
    # Per-tensor scalars come back to the host once, as one stacked tensor.
    w_rms = torch.stack(torch._foreach_norm(w)).tolist()
    delta = [eps + WEIGHT_FLOOR * rms / (p.numel() ** 0.5) for rms, p in zip(w_rms, params)]
    denom = torch._foreach_abs(w)
    torch._foreach_add_(denom, delta)
    r = torch._foreach_abs(g32)
    torch._foreach_div_(r, denom)
    torch._foreach_clamp_max_(r, R_MAX)
    torch._foreach_mul_(stabilities, alpha)
    torch._foreach_add_(stabilities, r, alpha=1.0 - alpha)
    del r, denom
    inv_bc = [1.0 / bc for bc in _bias_corrections(steps, alpha)]
    s_hat = torch._foreach_mul(stabilities, inv_bc)
    sums = torch.stack(torch._foreach_norm(s_hat, 1)).tolist()
    means = [total / p.numel() for total, p in zip(sums, params)]
    c = torch._foreach_add(s_hat, _TINY)
    torch._foreach_reciprocal_(c)
    torch._foreach_mul_(c, [m + _TINY for m in means])
    torch._foreach_clamp_min_(c, 1.0 / max_boost)
    torch._foreach_clamp_max_(c, max_boost)
    torch._foreach_mul_(g32, c)
    del c
    if lambda_reg > 0.0:
        excess = torch._foreach_mul(s_hat, [1.0 / (m + _TINY) for m in means])
        torch._foreach_sub_(excess, 1.0)
        torch._foreach_clamp_min_(excess, 0.0)
        torch._foreach_clamp_max_(excess, max_boost - 1.0)
        torch._foreach_mul_(excess, w)
        torch._foreach_add_(g32, excess, alpha=lambda_reg)
    if grad_scale != 1.0:
        torch._foreach_mul_(g32, grad_scale)
    for i in range(n):
        if g32[i] is not grads[i]:
            grads[i].copy_(g32[i])


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("v1", _v1_single_ref, _v1_foreach_ref, init_value=1.0, bias_corrected=False),
        Rule("v1-paper", _v1_single_paper, _v1_foreach_paper, init_value=1.0,
             bias_corrected=False),
        Rule("v2", _v2_single, _v2_foreach, init_value=0.0, bias_corrected=True),
    )
}
