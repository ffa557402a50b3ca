r"""``v2`` (bounded) and ``v3`` (protective, the default): an EMA normalised per tensor.

``v2``, for each tensor at step ``t``::

    delta = eps + floor * rms(w)                 # a weight floor relative to the tensor
    r     = min(signal, R_MAX)                   # relative: |g| / (|w| + delta);
                                                 # utility: |g w|; fisher: g^2
    s     = alpha * s + (1 - alpha) * r          # s starts at 0
    s_hat = s / (1 - alpha^t)                    # bias-corrected, no start-up transient
    m     = exp(mean(log s_hat over s_hat > 0))  # geometric mean of the active elements
    c     = clamp(m / (s_hat + tiny), 1 / max_damping, max_boost)   # max_damping: max_boost
    k     = lambda_reg * clamp(s_hat / m - 1, 0, max_boost - 1)

    mode="grad":   g = c * g + k * w
    mode="update": g = g + k * w, and after the base optimizer's step
                   w = w_before + c * (w - w_before)

``shock`` restarts a tensor's EMA when the sum of its signal jumps above ``shock`` times the
bias-corrected EMA's. An element as volatile as its tensor's typical element gets ``c = 1``; a
more volatile one is damped, down to ``1/max_damping``; a steadier one is boosted, up to
``max_boost``. The geometric mean (not the arithmetic one) is the reference because the signal
is heavy-tailed; it is taken over the elements whose EMA is not exactly 0, so weights that
never receive a gradient (dead units, unused embedding rows) do not push every live element to
the floor. ``lambda_reg`` decays only the elements more volatile than their tensor's typical
element.

``v3`` is ``v2`` that never enlarges a step: ``max_boost=1`` and ``max_damping`` defaulting to
the given ``max_boost``, i.e. ``c = clamp(m / (s_hat + tiny), 1 / max_boost, 1)``: the least
protected elements move up to ``max_boost`` times as fast as the most protected ones, none
faster than the base optimizer makes it (docs/results.md, issue 4: every boost above 1
increased forgetting).

Phases. In ``mode="update"``, ``before`` updates the EMA and returns each tensor's ``m``;
``after`` recomputes ``c`` from the stored EMA (no factor tensor lives between the phases)
and applies ``w = w + (1 - c) * (w_before - w)``, which leaves ``w`` exactly as the base made
it where ``c = 1``.

Numerics and syncs. ``single`` is the readable reference and sums logs in fp64. ``foreach``
and ``fused`` never wait for the host: the step counters, the bias corrections and ``m`` stay
on the device, and the logs are summed in fp32 by ``torch.sum`` per tensor (``_log_sums``).
A non-finite flag (``Context.found``) leaves the EMA and the grads untouched, masked on the
device.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from swgl.rules.base import Context, Hyper, Rule, Variants

__all__ = ["V2", "V3", "R_MAX", "WEIGHT_FLOOR", "TINY", "reference"]

#: Ceiling on the signal: keeps the EMA finite for any finite gradient.
R_MAX = 1e20
#: The weight floor of the relative signal, as a fraction of the tensor's RMS.
WEIGHT_FLOOR = 1e-3
TINY = 1e-30
#: The smallest positive fp32 (subnormal) and its log: what an exact zero is lifted to before
#: the log in the fp32 log-sums (its term is taken out again).
FLT_MIN = 2.0**-149
LOG_FLT_MIN = math.log(FLT_MIN)


def _inv_bias_correction(alpha: float, steps: Tensor) -> Tensor:
    """``1 / (1 - alpha^t)`` for ``t = max(steps, 1)``, in fp64 (alpha near 1 cancels)."""
    t = steps.to(torch.float64).clamp(min=1.0)
    return (1.0 / (1.0 - torch.pow(alpha, t))).to(torch.float32)


def reference(log_sums: Tensor, counts: Tensor) -> Tensor:
    """``m`` from the sums of ``log s_hat`` and the counts of active elements (1 if none)."""
    return torch.where(counts > 0, torch.exp(log_sums / counts.clamp(min=1.0)), 1.0)


def _commit(out: Tensor, new: Tensor, ok: Tensor | None) -> None:
    """``out = new``, or ``out`` unchanged where the step is skipped (no host sync)."""
    if ok is None or new.dtype != out.dtype:
        out.copy_(new if ok is None else torch.where(ok, new, out))
    else:
        torch.where(ok, new, out, out=out)


# -- single: per tensor, the readable reference ---------------------------------------------


def _signal(g32: Tensor, w: Tensor, delta: float | Tensor, signal: str) -> Tensor:
    if signal == "relative":
        r = g32.abs().div_(w.abs().add_(delta))
    elif signal == "utility":
        r = (g32 * w).abs_()
    else:  # "fisher"
        r = g32.square()
    return r.clamp_(max=R_MAX)


def _factor(s: Tensor, inv_bc: Tensor | float, m: Tensor | float, hp: Hyper):
    """``(s_hat, c)`` for one tensor."""
    s_hat = s * inv_bc
    return s_hat, (m / (s_hat + TINY)).clamp_(hp.min_scale, hp.max_boost)


def _delta(w: Tensor, i: int, hp: Hyper, ctx: Context) -> Tensor:
    w_sq = ctx.reduce_sum(w.square().sum().reshape(1))[0]
    return hp.eps + WEIGHT_FLOOR * (w_sq / ctx.numel(i, w)).sqrt()


def _before_single(params, grads, state, steps, hp: Hyper, ctx: Context):
    aux = []
    for i, (p, g, s, step) in enumerate(zip(params, grads, state["stability"], steps)):
        ok = ctx.ok(s.device)
        w = p.float()
        g32 = g.float() / ctx.grad_scale
        delta = _delta(w, i, hp, ctx) if hp.signal == "relative" else 0.0
        r = _signal(g32, w, delta, hp.signal)
        if hp.shock > 0.0:
            _restart_if_shocked([r], [s], [step], hp, ctx)
        _commit(s, torch.lerp(s, r, 1.0 - hp.alpha), ok)
        s_hat = s * _inv_bias_correction(hp.alpha, step)
        active = s_hat > 0
        log_sum = torch.where(active, s_hat, 1.0).log().sum(dtype=torch.float64).reshape(1)
        count = active.sum(dtype=torch.float64).reshape(1)
        m = reference(ctx.reduce_sum(log_sum), ctx.reduce_sum(count))[0].float()
        _, c = _factor(s_hat, 1.0, m, hp)
        new_g = g32 * c if hp.mode == "grad" else g32
        if hp.lambda_reg > 0.0:
            excess = (s_hat / (m + TINY) - 1.0).clamp_(0.0, hp.max_boost - 1.0)
            new_g = new_g + hp.lambda_reg * excess * w
        if hp.mode == "grad" or hp.lambda_reg > 0.0:
            _commit(g, new_g * ctx.grad_scale, ok)
        aux.append(m)
    return aux if hp.mode == "update" else None


def _after_single(params, snapshots, state, steps, aux, hp: Hyper, ctx: Context) -> None:
    for p, before, s, step, m in zip(params, snapshots, state["stability"], steps, aux):
        s_hat = s * _inv_bias_correction(hp.alpha, step)
        keep = (1.0 - m / (s_hat + TINY)).clamp_(1.0 - hp.max_boost, 1.0 - hp.min_scale)
        w = p.float()
        p.copy_(w + keep * (before.float() - w))


# -- foreach: the same math over the whole list ---------------------------------------------


def _signal_foreach(g32, w, hp: Hyper, ctx: Context) -> list[Tensor]:
    if hp.signal == "relative":
        sq = ctx.reduce_sum(torch.stack(torch._foreach_norm(w, 2)).square())
        # per-tensor scalars as Python numbers: no host-to-device copy
        mean_sq = torch._foreach_div(list(sq.unbind()), [ctx.numel(i, t) for i, t in enumerate(w)])
        delta = torch._foreach_sqrt(mean_sq)
        torch._foreach_mul_(delta, WEIGHT_FLOOR)
        torch._foreach_add_(delta, hp.eps)
        denom = torch._foreach_abs(w)
        torch._foreach_add_(denom, delta)
        r = torch._foreach_abs(g32)
        torch._foreach_div_(r, denom)
    elif hp.signal == "utility":
        r = torch._foreach_mul(g32, w)
        torch._foreach_abs_(r)
    else:  # "fisher"
        r = torch._foreach_mul(g32, g32)
    torch._foreach_clamp_max_(r, R_MAX)
    return r


def _log_sums(s: list[Tensor], ctx: Context) -> tuple[Tensor, Tensor]:
    """Per tensor: the sum of ``log s`` over ``s > 0`` and the count of ``s > 0``, in fp32
    without a host sync (see the module docstring).

    Exact zeros are lifted to the smallest positive fp32 before the log and their known terms
    taken out again; ``torch.sum``'s tree reduction stays accurate at millions of elements
    (``_foreach_norm``'s running fp32 sum drifts by percents there). Counts are exact int64.
    """
    x = torch._foreach_clamp_min(s, FLT_MIN)
    torch._foreach_log_(x)
    sums = torch.stack([t.sum() for t in x]).double()
    nonzero = [torch.count_nonzero(t) for t in s]
    counts = torch.stack(nonzero).double()
    zeros = torch.stack([t.numel() - n for t, n in zip(s, nonzero)]).double()
    totals = sums - zeros * LOG_FLT_MIN
    return ctx.reduce_sum(totals.float()), ctx.reduce_sum(counts.float())


def _keep_foreach(s, inv_bc: Tensor, m: Tensor, hp: Hyper, *, sign: float) -> list[Tensor]:
    """``c`` (``sign=1``) or ``1 - c`` (``sign=-1``) per element, from the stored EMA."""
    x = torch._foreach_mul(s, list(inv_bc.unbind()))
    torch._foreach_add_(x, TINY)
    torch._foreach_reciprocal_(x)
    torch._foreach_mul_(x, list((m * sign).unbind()))
    if sign > 0:
        torch._foreach_clamp_min_(x, hp.min_scale)
        torch._foreach_clamp_max_(x, hp.max_boost)
    else:
        torch._foreach_add_(x, 1.0)
        torch._foreach_clamp_min_(x, 1.0 - hp.max_boost)
        torch._foreach_clamp_max_(x, 1.0 - hp.min_scale)
    return x


def _before_foreach(params, grads, state, steps, hp: Hyper, ctx: Context):
    s = state["stability"]
    ok = ctx.ok(s[0].device)
    w = [p.float() for p in params]
    g32 = [g.float() for g in grads]
    if ctx.grad_scale != 1.0:
        g32 = torch._foreach_div(g32, ctx.grad_scale)
    r = _signal_foreach(g32, w, hp, ctx)
    if hp.shock > 0.0:
        _restart_if_shocked(r, s, steps, hp, ctx)
    if ok is None:
        torch._foreach_lerp_(s, r, 1.0 - hp.alpha)
    else:
        for out, new in zip(s, torch._foreach_lerp(s, r, 1.0 - hp.alpha)):
            _commit(out, new, ok)
    del r
    inv_bc = _inv_bias_correction(hp.alpha, torch.stack(steps).to(s[0].device))
    log_sums, counts = _log_sums(s, ctx)
    m = reference(log_sums + counts * inv_bc.log(), counts)
    if hp.mode == "grad":
        new_g = _keep_foreach(s, inv_bc, m, hp, sign=1.0)
        torch._foreach_mul_(new_g, g32)
    else:
        new_g = g32
    if hp.lambda_reg > 0.0:
        k = torch._foreach_mul(s, list((inv_bc / (m + TINY)).unbind()))
        torch._foreach_sub_(k, 1.0)
        torch._foreach_clamp_min_(k, 0.0)
        torch._foreach_clamp_max_(k, hp.max_boost - 1.0)
        torch._foreach_mul_(k, w)
        new_g = torch._foreach_add(new_g, k, alpha=hp.lambda_reg)
    if hp.mode == "grad" or hp.lambda_reg > 0.0:
        if ctx.grad_scale != 1.0:
            torch._foreach_mul_(new_g, ctx.grad_scale)
        if ok is None:
            torch._foreach_copy_(grads, new_g)
        else:
            for out, new in zip(grads, new_g):
                _commit(out, new, ok)
    return list(m.unbind()) if hp.mode == "update" else None


def _after_foreach(params, snapshots, state, steps, aux, hp: Hyper, ctx: Context) -> None:
    s = state["stability"]
    inv_bc = _inv_bias_correction(hp.alpha, torch.stack(steps).to(s[0].device))
    keep = _keep_foreach(s, inv_bc, torch.stack(aux), hp, sign=-1.0)
    if all(p.dtype == torch.float32 for p in params):
        torch._foreach_lerp_(params, snapshots, keep)
        return
    w = [p.float() for p in params]
    torch._foreach_lerp_(w, [b.float() for b in snapshots], keep)
    torch._foreach_copy_(params, w)


def _restart_if_shocked(r, s, steps, hp: Hyper, ctx: Context) -> None:
    """Restart the EMA of every tensor whose signal jumped above ``shock`` x its EMA.

    ``shock`` is off by default; this path reads the per-tensor sums (and the skip flag) on
    the host.
    """
    if ctx.found is not None and bool(ctx.found.reshape(())):
        return
    current = ctx.reduce_sum(torch.stack(torch._foreach_norm(r, 1))).tolist()
    previous = ctx.reduce_sum(torch.stack(torch._foreach_norm(s, 1))).tolist()
    for now, before, s_i, step in zip(current, previous, s, steps):
        t = int(step.item())
        if t > 1 and now > hp.shock * before / (1.0 - hp.alpha ** (t - 1)):
            s_i.zero_()
            step.fill_(1)


# -- fused: Triton (swgl.kernels), the rest of the list through foreach ---------------------


def _before_fused(params, grads, state, steps, hp: Hyper, ctx: Context):
    from swgl import kernels

    return kernels.run_fused("v2", _before_foreach, params, grads, state, steps, hp, ctx)


def _after_fused(params, snapshots, state, steps, aux, hp: Hyper, ctx: Context) -> None:
    from swgl import kernels

    kernels.run_fused_after(_after_foreach, params, snapshots, state, steps, aux, hp, ctx)


def _factor_from_state(s: Tensor, step: int, hp: Hyper,
                       group_mean: Tensor | float | None = None) -> tuple[Tensor, Tensor]:
    """What :mod:`swgl.stats` reports: ``(s_hat, c)`` from a stored EMA (its reference is the
    tensor's own: ``group_mean`` is not read)."""
    s_hat = s * _inv_bias_correction(hp.alpha, torch.tensor(float(step)))
    active = s_hat > 0
    log_sum = torch.where(active, s_hat, 1.0).log().sum(dtype=torch.float64)
    m = reference(log_sum, active.sum(dtype=torch.float64)).float()
    return _factor(s_hat, 1.0, m, hp)


# -- v3: v2 with its ceiling at 1 -----------------------------------------------------------


def _as_v3(hp: Hyper) -> Hyper:
    return replace(hp, max_boost=1.0, max_damping=1.0 / hp.min_scale)


V2 = Rule(
    name="v2",
    before=Variants(_before_single, _before_foreach, _before_fused),
    after=Variants(_after_single, _after_foreach, _after_fused),
    options=frozenset({"alpha", "lambda_reg", "eps", "max_boost", "signal", "max_damping",
                       "mode", "shock"}),
    state=(("stability", 0.0),),
    snapshot=True,
    modes=("update", "grad"),
    device_guard=True,
    factor=_factor_from_state,
    kernel="v2",
)
V3 = replace(V2, name="v3", hyper=_as_v3)
