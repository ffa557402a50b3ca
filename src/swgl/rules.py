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

``v2`` (bounded), for each tensor at finite step ``t``::

    delta = eps + floor * rms(w)                 # a weight floor relative to the tensor
    r     = min(signal, R_MAX)                   # relative: |g| / (|w| + delta);
                                                 # utility: |g w|; fisher: g^2
    s     = alpha * s + (1 - alpha) * r           # s starts at 0
    s_hat = s / (1 - alpha^t)                     # bias-corrected, no start-up transient
    m     = exp(mean(log s_hat over s_hat > 0))   # geometric mean of the active elements
    c     = clamp(m / (s_hat + tiny), 1 / max_damping, max_boost)   # max_damping: max_boost
    g     = c * g + lambda_reg * clamp(s_hat / m - 1, 0, max_boost - 1) * w

(in ``mode="update"`` the grads get only the ``lambda_reg`` term and ``c`` scales the base
optimizer's step instead; ``shock`` restarts a tensor's EMA when the sum of its signal jumps
above ``shock`` times the bias-corrected EMA's). So an element as volatile as its tensor's
typical element gets ``c = 1``; a more volatile one
is damped, down to ``1/max_boost``; a steadier one is boosted, up to ``max_boost``. The
geometric mean (not the arithmetic one) is the reference because ``|g|/|w|`` is heavy-tailed:
a few near-zero weights would otherwise drag the mean up and boost almost every element. It
is taken over the elements whose EMA is not exactly 0: weights that never receive a gradient
(dead units, constant-zero inputs, unused embedding rows) would contribute ``log 0`` and push
every live element to the floor.
``lambda_reg`` is a weight decay applied only to elements more volatile than their tensor's
typical element, with a coefficient that never exceeds ``lambda_reg * (max_boost - 1)``.

``v3`` (protective, the default since issue 4): ``v2`` that never enlarges a step::

    c = clamp(m / (s_hat + tiny), 1 / max_damping, 1)      # max_damping defaults to max_boost

with ``s_hat`` and ``m`` as in ``v2``. ``max_boost`` keeps the seed's meaning *relatively*: the
least protected elements move up to ``max_boost`` times as fast as the most protected ones,
but no element moves faster than the base optimizer makes it. The ``lambda_reg`` term's
coefficient is bounded by the ceiling minus 1, so it is 0: ``lambda_reg`` has no effect in
``v3``. ``v3`` is exactly ``v2`` with ``max_boost=1, max_damping=<v3's floor>``; the
measurements (docs/results.md, issue 4) show that every boost above 1 increases forgetting.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import Tensor

#: Ceiling on v2's relative impact: keeps the EMA finite for any finite gradient.
R_MAX = 1e20
#: v2's weight floor, as a fraction of the tensor's RMS.
WEIGHT_FLOOR = 1e-3
_TINY = 1e-30


@dataclass(frozen=True)
class Hyper:
    """A param group's SWGL options, as the rules read them."""

    alpha: float
    lambda_reg: float
    eps: float
    max_boost: float
    signal: str = "relative"
    max_damping: float | None = None
    mode: str = "grad"
    shock: float = 0.0

    @property
    def min_scale(self) -> float:
        return 1.0 / (self.max_boost if self.max_damping is None else self.max_damping)


def _local_sum(partial_sums: Tensor) -> Tensor:
    return partial_sums


@dataclass(frozen=True)
class Context:
    """How a call sees its tensors; the defaults describe plain, unscaled, unsharded tensors.

    ``reduce_sum`` completes a 1-D tensor of per-tensor partial sums into global sums (an
    all-reduce when the tensors are shards), and ``numels`` are the global element counts.
    """

    grad_scale: float = 1.0
    reduce_sum: Callable[[Tensor], Tensor] = _local_sum
    numels: tuple[int, ...] | None = None

    def numel(self, i: int, t: Tensor) -> int:
        return t.numel() if self.numels is None else self.numels[i]


@dataclass(frozen=True)
class Rule:
    """A rule's two implementations and the value its stability state starts at.

    Both implementations have the signature
    ``impl(params, grads, stabilities, steps, hp: Hyper, ctx: Context)``. They return None,
    or, for ``hp.mode == "update"``, the per-tensor factors the caller applies to the base
    optimizer's update (the grads then only receive the ``lambda_reg`` term).
    """

    name: str
    single: Callable[..., None]
    foreach: Callable[..., None]
    init_value: float


# --------------------------------------------------------------------------------------------
# v1 and v1-paper: the seed's formulas, op for op.
# --------------------------------------------------------------------------------------------


def _v1_single(params, grads, stabilities, steps, hp: Hyper, ctx: Context, *, paper: bool):
    scale = ctx.grad_scale
    for p, g, s in zip(params, grads, stabilities):
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


def _v1_foreach(params, grads, stabilities, steps, hp: Hyper, ctx: Context, *, paper: bool):
    scale = ctx.grad_scale
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


# --------------------------------------------------------------------------------------------
# v2: bounded, bias-corrected, normalised per tensor.
# --------------------------------------------------------------------------------------------


def _tensor_sums(tensors: list[Tensor], ord: float, ctx: Context) -> list[float]:
    """Global per-tensor ``sum |x|`` (ord=1) or ``sum x^2`` (ord=2), one host sync."""
    norms = torch.stack([n.float() for n in torch._foreach_norm(tensors, ord)])
    if ord == 2:
        norms = norms.square()
    return ctx.reduce_sum(norms).tolist()


def _log_means(tensors: list[Tensor], ctx: Context) -> list[float]:
    """Per-tensor mean of ``log x`` over the elements with ``x > 0`` (0 if there are none),
    for ``x >= 0``; summed per tensor in fp64, one host sync.

    (A shifted fp32 1-norm through ``_foreach_norm`` was off by ~5% in ``exp(mean)`` for
    tensors of a few million elements.)
    """
    totals, counts = [], []
    for t in tensors:
        active = t > 0
        totals.append(torch.where(active, t, 1.0).log_().sum(dtype=torch.float64))
        counts.append(active.sum(dtype=torch.float64))
    # Two calls: reduce_sum takes one partial sum per tensor (the blocked path maps chunks).
    totals = ctx.reduce_sum(torch.stack(totals)).tolist()
    counts = ctx.reduce_sum(torch.stack(counts)).tolist()
    return [total / count if count > 0 else 0.0 for total, count in zip(totals, counts)]


def _signal(g32: Tensor, w: Tensor, delta: float | Tensor, signal: str) -> Tensor:
    """The per-element quantity the EMA tracks (see the module docstring)."""
    if signal == "relative":
        r = g32.abs().div_(w.abs().add_(delta))
    elif signal == "utility":
        r = (g32 * w).abs_()
    else:  # "fisher"
        r = g32.square()
    return r.clamp_(max=R_MAX)


def _v2_single(params, grads, stabilities, steps, hp: Hyper, ctx: Context):
    factors = []
    for i, (p, g, s, step) in enumerate(zip(params, grads, stabilities, steps)):
        n = ctx.numel(i, p)
        w = p.float()
        g32 = g.float() / ctx.grad_scale
        # [0]: a 0-d delta, so that it broadcasts in place into 0-d params too
        w_sq = ctx.reduce_sum(w.square().sum().reshape(1))[0]
        delta = hp.eps + WEIGHT_FLOOR * (w_sq / n).sqrt()
        r = _signal(g32, w, delta, hp.signal)
        if hp.shock > 0.0 and step.item() > 1:
            prev = ctx.reduce_sum(s.sum().reshape(1)) / (1.0 - hp.alpha ** (step.item() - 1))
            if ctx.reduce_sum(r.sum().reshape(1)) > hp.shock * prev:
                s.zero_()
                step.fill_(1)
        s.mul_(hp.alpha).add_(r, alpha=1.0 - hp.alpha)
        s_hat = s / (1.0 - hp.alpha ** int(step.item()))
        m = math.exp(_log_means([s_hat], ctx)[0])
        c = (m / (s_hat + _TINY)).clamp_(hp.min_scale, hp.max_boost)
        new_g = g32.mul_(c) if hp.mode == "grad" else g32
        if hp.lambda_reg > 0.0:
            excess = (s_hat / (m + _TINY) - 1.0).clamp_(0.0, hp.max_boost - 1.0)
            new_g.add_(excess.mul_(w), alpha=hp.lambda_reg)
        g.copy_(new_g.mul_(ctx.grad_scale))
        factors.append(c)
    return factors if hp.mode == "update" else None


def v2_coefficients(params, grads, stabilities, steps, hp: Hyper, ctx: Context):
    """v2's EMA update (in place) and its coefficients, with foreach ops.

    Returns ``(c, k)``: the rule maps a gradient ``g`` (in the caller's units) to
    ``c * g + k * w``; ``k`` is None when ``lambda_reg`` is 0. The foreach rule applies them,
    and the fused optimizers' fallback (:mod:`swgl.optim`) applies ``c`` to their own update.
    """
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
    if hp.shock > 0.0:
        _restart_shocked(r, stabilities, steps, hp, ctx)
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


def _v2_foreach(params, grads, stabilities, steps, hp: Hyper, ctx: Context):
    c, k = v2_coefficients(params, grads, stabilities, steps, hp, ctx)
    new_g = [g.float() for g in grads]
    if hp.mode == "grad":
        new_g = torch._foreach_mul(new_g, c)
    if k is not None:
        torch._foreach_addcmul_(new_g, k, [p.float() for p in params])
    for g, value in zip(grads, new_g):
        if value is not g:
            g.copy_(value)
    return c if hp.mode == "update" else None


def _restart_shocked(r, stabilities, steps, hp: Hyper, ctx: Context) -> None:
    """Restart the EMA of every tensor whose signal jumped above ``shock`` x its EMA."""
    current = _tensor_sums(r, 1, ctx)
    previous = _tensor_sums(stabilities, 1, ctx)
    for now, before, s, step in zip(current, previous, stabilities, steps):
        t = int(step.item())
        if t > 1 and now > hp.shock * before / (1.0 - hp.alpha ** (t - 1)):
            s.zero_()
            step.fill_(1)


def _v3(v2_impl: Callable[..., list[Tensor] | None]) -> Callable[..., list[Tensor] | None]:
    """``v2_impl`` with the ceiling at 1 and the floor kept (see ``v3`` in the docstring)."""
    def v3(params, grads, stabilities, steps, hp: Hyper, ctx: Context):
        damping_only = replace(hp, max_boost=1.0, max_damping=1.0 / hp.min_scale)
        return v2_impl(params, grads, stabilities, steps, damping_only, ctx)
    return v3


RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (
        Rule("v1", partial(_v1_single, paper=False), partial(_v1_foreach, paper=False), 1.0),
        Rule("v1-paper", partial(_v1_single, paper=True), partial(_v1_foreach, paper=True), 1.0),
        Rule("v2", _v2_single, _v2_foreach, 0.0),
        Rule("v3", _v3(_v2_single), _v3(_v2_foreach), 0.0),
    )
}
