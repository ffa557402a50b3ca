r"""``v4`` (importance damping; the default from issue 12 until ``v5``, which builds on it):
an EMA of the squared gradient, normalised by its mean over the param group, damps the steps
of the elements that matter, and the step is rescaled so that it makes the same first-order
progress as the base optimizer's.

For every element of a param group, at each step::

    s   = alpha * s + (1 - alpha) * min(g^2, R_MAX)  # s starts at 0; g without the loss scale
    m   = sum(s) / numel                             # over the whole group (all shards)
    c   = clamp(1 / (1 + lambda_reg * s / (m + eps^2)), 1 / max_boost, 1)

    mode="update" (default), after the base optimizer made the step u = w - w_before:
        rho = clamp(sum(g u) / sum(c g u), 1, max_boost)     (1 unless both sums are < 0)
        w   = w_before + rho * c * u
    mode="grad", before the base step:
        rho = clamp(sum(g^2) / sum(c g^2), 1, max_boost)
        g   = rho * c * g

``s`` estimates the diagonal Fisher information, so ``s / m`` is how much an element's loss
curvature exceeds the group's typical element. The Fisher is heavy-tailed: most elements have
``s << m`` and keep ``c`` near 1, while the few the network relies on move up to ``max_boost``
times slower. ``rho`` gives back what the damping took from the step's first-order decrease of
the loss (``g . u``): the step turns away from the important elements instead of shrinking, so
SWGL is not a learning-rate cut in disguise, and on a single task it learns as fast as the
base optimizer or faster (docs/results.md, "Earn its place"). With ``alpha`` near 1 (the
default 0.999, a horizon of ~1000 steps) the protection outlives a change of task; no task
boundary is needed. The options:

* ``alpha``: the EMA decay (its horizon is ``1 / (1 - alpha)`` steps);
* ``lambda_reg``: the stability penalty's strength: how strongly importance bends a step away
  from an element (0 turns SWGL off: ``c = rho = 1``);
* ``eps``: a floor under the gradient's RMS (``eps^2`` under ``m``), so a group whose
  gradients all vanish is not divided by 0;
* ``max_boost``: bounds both the damping (``c >= 1 / max_boost``) and ``rho``.

Because ``s`` enters only through ``s / m``, a bias correction of the EMA would cancel: the rule
reads no step counter. Sums are over every element of the group: shards complete them with
``Context.reduce_sum``.

Phases. ``before`` updates the EMA and computes ``k = lambda_reg / (m + eps^2)``, a device
scalar (no host sync); in ``mode="update"`` it returns ``(k, g)`` per param and ``after``
recomputes ``c`` from the stored EMA, so no factor tensor lives between the phases. A
non-finite flag (``Context.found``) leaves the EMA and the grads as they were. For a caller
that asks (``Context.g2_sum``: v5's detector), ``before`` also sums the capped ``g^2`` over
the group: the Triton kernels in the EMA pass's read of the grads, foreach from the EMA's
``g^2``, the CPU's compiled path in a pass of its own (:func:`_g2_sum_cpu`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from swgl.rules.base import Context, Hyper, Rule, Variants, add_one_, fp32

__all__ = ["V4", "R_MAX", "factor", "progress_ratio"]

#: Ceiling on g^2: keeps the EMA and its group sum finite for any finite gradient.
R_MAX = 1e20


def _commit(out: Tensor, new: Tensor, ok: Tensor | None) -> Tensor:
    """``out = new``, or ``out`` unchanged where the step is skipped (no host sync); returns
    what ``out`` now holds."""
    kept = new if ok is None else torch.where(ok, new, out)
    out.copy_(kept)
    return kept


def _factor(s: Tensor, k: Tensor | float, min_c: Tensor | float) -> Tensor:
    return (s * k).add_(1.0).reciprocal_().clamp_(min=min_c)


def factor(s: Tensor, k: Tensor | float, hp: Hyper) -> Tensor:
    """``c = clamp(1 / (1 + k s), 1 / max_boost, 1)`` for one tensor (``s >= 0``)."""
    return _factor(s, k, 1.0 / hp.max_boost)


def progress_ratio(full: Tensor, damped: Tensor, hp: Hyper) -> Tensor:
    """``rho = clamp(full / damped, 1, max_boost)``, or 1 unless both (descent) sums agree.

    ``full`` and ``damped`` are the group's ``sum(g u)`` and ``sum(c g u)`` (update mode; both
    < 0 for a descent step) or ``sum(g^2)`` and ``sum(c g^2)`` (grad mode, negated by the
    caller so that the same test applies)."""
    ratio = full / damped.clamp(max=-1e-38)
    ok = (full < 0) & (damped < 0) & torch.isfinite(ratio)   # sums that overflowed: no rescale
    return torch.where(ok, ratio.clamp(1.0, hp.max_boost), 1.0)


def _strength(partial_sums: Tensor, numel: int, hp: Hyper, ctx: Context) -> Tensor:
    """``k = lambda_reg / (m + eps^2)`` from per-tensor partial sums of ``s`` (a device 0-d)."""
    total = ctx.reduce_sum(partial_sums).sum()
    return hp.lambda_reg / (total / numel + hp.eps * hp.eps)


def _total(partial_sums: list[Tensor] | Tensor, ctx: Context) -> Tensor:
    sums = partial_sums if isinstance(partial_sums, Tensor) else torch.stack(partial_sums)
    return ctx.reduce_sum(sums.reshape(-1)).sum()


def _hand_g2(sums: Tensor, ctx: Context) -> Tensor:
    """The per-tensor sums of ``s`` from the EMA pass's: ``sums`` itself ([T]), or, when the
    caller asked for ``ctx.g2_sum``, the first row of ``sums`` ([2, T]), the second's total
    (the capped ``g^2``) appended to ``ctx.g2_sum``."""
    if ctx.g2_sum is None:
        return sums
    ctx.g2_sum.append(_total(sums[1], ctx))
    return sums[0]


def _numel(params, ctx: Context) -> int:
    return sum(map(Tensor.numel, params)) if ctx.numels is None else sum(ctx.numels)


# -- per tensor: the formulas, once. The single variant runs them eagerly, the CPU's fused
# -- variant compiled (swgl.kernels.compiled); scalars are floats or 0-d tensors ----------


def _capped_g2(g: Tensor, grad_scale) -> Tensor:
    """``min((g / scale)^2, R_MAX)``, in fp32."""
    g32 = g.float() / grad_scale
    return (g32 * g32).clamp(max=R_MAX)


def _ema_in_place(g: Tensor, s: Tensor, ok: Tensor | None, grad_scale,
                  one_minus_alpha) -> Tensor:
    """``s = s + (1 - alpha) (min((g / scale)^2, R_MAX) - s)`` in place; returns what ``s``
    now holds."""
    return _commit(s, s + one_minus_alpha * (_capped_g2(g, grad_scale) - s), ok)


def _ema_one(g: Tensor, s: Tensor, ok: Tensor | None, grad_scale, one_minus_alpha) -> Tensor:
    """:func:`_ema_in_place`; returns ``sum(s)``."""
    return _ema_in_place(g, s, ok, grad_scale, one_minus_alpha).sum()


def _ema_no_sum(g: Tensor, s: Tensor, ok: Tensor | None, grad_scale, one_minus_alpha) -> None:
    """:func:`_ema_in_place`, for a caller that needs no sum: compiled for the CPU, a third
    faster than :func:`_ema_one` (its loop stores ``s`` and nothing else)."""
    _ema_in_place(g, s, ok, grad_scale, one_minus_alpha)


def _g2_sum_one(g: Tensor, grad_scale) -> Tensor:
    """``sum(min((g / scale)^2, R_MAX))``, for a caller that asked for ``Context.g2_sum``.

    Its own function, not a second sum returned by :func:`_ema_one`: Inductor (torch 2.13,
    CPU) makes one loop per sum, and the EMA's loop then also stores the new ``s`` to a
    buffer for its sum (2.5x the time of ``_ema_one``, where this pass adds 0.6x). Summed in
    fp64: Inductor's fp32 sum is a cascade of partial sums that takes 1.5x as long."""
    return _capped_g2(g, grad_scale).sum(dtype=torch.float64).float()


def _g2_sum_cpu(g: Tensor, grad_scale: Tensor) -> Tensor:
    """:func:`_g2_sum_one` for a large CPU tensor: ``torch.dot(g, g)`` (BLAS: 0.8 ms on 4.2M
    fp32 elements, where the compiled capped sum takes 2.1) when the sum is below ``R_MAX``,
    so that no element reached the cap (one host read, which costs no sync on the CPU); else,
    and for other dtypes, the compiled capped sum."""
    from swgl.kernels import compiled as cc

    if g.dtype == torch.float32:
        n = torch.dot(g, g) / (grad_scale * grad_scale)
        if float(n) < R_MAX:
            return n
    return cc.compiled(_g2_sum_one)(g, grad_scale)


def _with_g2(sums: list[Tensor], grads, grad_scale, ctx: Context, g2_sum=_g2_sum_one) -> list:
    """Per tensor ``sum(s)``, or ``(sum(s), sum of the capped g^2)`` when ``ctx.g2_sum`` asks."""
    if ctx.g2_sum is None:
        return sums
    return [torch.stack([x, g2_sum(g, grad_scale)]) for x, g in zip(sums, grads)]


def _grad_sums_one(g: Tensor, s: Tensor, k, min_c) -> Tensor:
    """Grad mode: ``(-sum(g^2), -sum(c g^2))``."""
    g2 = g.float() * g.float()
    return torch.stack([-g2.sum(), -(_factor(s, k, min_c) * g2).sum()])


def _rescale_grad_one(g: Tensor, s: Tensor, ok: Tensor | None, k, rho, min_c) -> None:
    """Grad mode: ``g = rho c g`` in place."""
    _commit(g, g.float() * (rho * _factor(s, k, min_c)), ok)


def _update_sums_one(p: Tensor, b: Tensor, g: Tensor, s: Tensor, k, min_c) -> Tensor:
    """Update mode: ``(sum(g u), sum(c g u))`` with ``u = p - b`` (``b``: before the step)."""
    gu = g.float() * (p.float() - b.float())
    return torch.stack([gu.sum(), (_factor(s, k, min_c) * gu).sum()])


def _apply_update_one(p: Tensor, b: Tensor, s: Tensor, k, rho, min_c) -> None:
    """Update mode: ``p = b + rho c (p - b)`` in place."""
    b32 = b.float()
    p.copy_(b32 + rho * _factor(s, k, min_c) * (p.float() - b32))


# -- single: per tensor, the readable reference ---------------------------------------------


def _before_single(params, grads, state, steps, hp: Hyper, ctx: Context):
    stabilities = state["stability"]
    sums = [_ema_one(g, s, ctx.ok(s.device), ctx.grad_scale, 1.0 - hp.alpha)
            for g, s in zip(grads, stabilities)]
    sums = _with_g2(sums, grads, ctx.grad_scale, ctx)
    k = _strength(_hand_g2(torch.stack(sums, -1), ctx), _numel(params, ctx), hp, ctx)
    if hp.mode == "update":
        return [(k, g) for g in grads]
    min_c = 1.0 / hp.max_boost
    full, damped = ctx.reduce_sum(
        torch.stack([_grad_sums_one(g, s, k, min_c) for g, s in zip(grads, stabilities)]).sum(0))
    rho = progress_ratio(full, damped, hp)
    for g, s in zip(grads, stabilities):
        _rescale_grad_one(g, s, ctx.ok(s.device), k, rho, min_c)
    return None


def _after_single(params, snapshots, state, steps, aux, hp: Hyper, ctx: Context) -> None:
    k, min_c = aux[0][0], 1.0 / hp.max_boost
    s = state["stability"]
    full, damped = ctx.reduce_sum(torch.stack([
        _update_sums_one(p, b, g, si, k, min_c)
        for p, b, (_, g), si in zip(params, snapshots, aux, s)]).sum(0))
    rho = progress_ratio(full, damped, hp)
    for p, b, si in zip(params, snapshots, s):
        _apply_update_one(p, b, si, k, rho, min_c)


# -- foreach: the same math over the whole list ---------------------------------------------


def _factors_foreach(stabilities: list[Tensor], k: Tensor, hp: Hyper) -> list[Tensor]:
    c = torch._foreach_mul(stabilities, k)
    add_one_(c)
    torch._foreach_reciprocal_(c)
    torch._foreach_clamp_min_(c, 1.0 / hp.max_boost)
    return c


def _squares(grads: list[Tensor], grad_scale: float) -> list[Tensor]:
    """``(g / grad_scale)^2`` in fp32, per tensor (new tensors): what the EMA reads."""
    r = fp32(grads)
    r = torch._foreach_div(r, grad_scale) if grad_scale != 1.0 else r
    return torch._foreach_mul(r, r)


def host_guard(grads: list[Tensor], grad_scale: float) -> tuple[list[Tensor], Tensor] | None:
    """The CPU's non-finite guard for the foreach variant, from the squares its EMA reads
    (no pass of its own): ``(squares, their per-tensor sums)`` when every sum is at most
    ``R_MAX``, so that every grad is finite (an inf or a NaN makes its tensor's sum one) and
    no square needs the cap; else None (an overflow, a huge grad, a non-finite one: the
    caller's guard decides). The sums are the ones the EMA would take: the detector's
    signal, bit for bit."""
    r = _squares(grads, grad_scale)
    sums = torch.stack([x.sum() for x in r])
    return (r, sums) if all(v <= R_MAX for v in sums.tolist()) else None


def _ema_foreach(grads, s: list[Tensor], hp: Hyper, ctx: Context) -> Tensor | None:
    """``s = s + (1 - alpha) (g^2 - s)`` in place (unchanged where the step is skipped);
    with ``ctx.g2_sum`` set, returns the per-tensor sums of the capped ``g^2``."""
    ok = ctx.ok(s[0].device)
    if ctx.squares is not None:   # the host guard's: no square above the cap
        r, sums = ctx.squares
    else:
        r, sums = _squares(grads, ctx.grad_scale), None
        torch._foreach_clamp_max_(r, R_MAX)
    if ok is None:  # lerp: s + (1 - alpha) (r - s) in one pass
        torch._foreach_lerp_(s, r, 1.0 - hp.alpha)
    else:
        for out, new in zip(s, torch._foreach_lerp(s, r, 1.0 - hp.alpha)):
            _commit(out, new, ok)
    if ctx.g2_sum is None:
        return None
    if sums is not None:
        return sums
    # r >= 0: its sum is its 1-norm, one launch on CUDA; on the CPU a sum per tensor (the
    # CPU's foreach 1-norm is a running sum, 10x as long on a 6M-param MLP)
    return torch.stack(torch._foreach_norm(r, 1) if r[0].is_cuda else [x.sum() for x in r])


def _sums(xs: list[Tensor], ys: list[Tensor], ctx: Context) -> tuple[Tensor, Tensor]:
    """The group's ``sum(x)`` and ``sum(y x)`` (``x`` may be negative: no norm shortcut)."""
    xs_sum = torch.stack([x.sum() for x in xs])
    yx = torch._foreach_mul(xs, ys)
    return _total(xs_sum, ctx), _total(torch.stack([x.sum() for x in yx]), ctx)


def _rescale_grads_foreach(grads, s: list[Tensor], k: Tensor, hp: Hyper, ctx: Context) -> None:
    ok = ctx.ok(s[0].device)
    g32 = [g.float() for g in grads]
    c = _factors_foreach(s, k, hp)
    g2 = torch._foreach_mul(g32, g32)
    torch._foreach_neg_(g2)
    full, damped = _sums(g2, c, ctx)
    torch._foreach_mul_(c, progress_ratio(full, damped, hp))
    torch._foreach_mul_(c, g32)
    if ok is None:
        torch._foreach_copy_(grads, c)
    else:
        for out, new in zip(grads, c):
            _commit(out, new, ok)


def _before_foreach(params, grads, state, steps, hp: Hyper, ctx: Context):
    s = state["stability"]
    g2 = _ema_foreach(grads, s, hp, ctx)
    # lambda_reg 0 (v6's default): k is 0, and the sums of s would cost a pass over them
    k = (_strength(torch.stack(torch._foreach_norm(s, 1)), _numel(params, ctx), hp, ctx)
         if hp.lambda_reg > 0.0 else torch.zeros((), device=s[0].device))
    if g2 is not None:
        ctx.g2_sum.append(_total(g2, ctx))
    if hp.mode == "update":
        return [(k, g) for g in grads]
    _rescale_grads_foreach(grads, s, k, hp, ctx)
    return None


def _after_foreach(params, snapshots, state, steps, aux, hp: Hyper, ctx: Context) -> None:
    c = _factors_foreach(state["stability"], aux[0][0], hp)
    w = [p.float() for p in params]
    before = [b.float() for b in snapshots]
    u = torch._foreach_sub(w, before)
    gu = torch._foreach_mul(u, [g.float() for _, g in aux])
    full, damped = _sums(gu, c, ctx)
    del gu
    torch._foreach_mul_(c, progress_ratio(full, damped, hp))
    torch._foreach_mul_(u, c)
    torch._foreach_add_(u, before)   # into u: the snapshots are only read (v6 reads them next)
    torch._foreach_copy_(params, u)


# -- fused: Triton (swgl.kernels.triton_importance) on CUDA, compiled on the CPU; the tensors
# -- the kernels cannot take go through foreach ----------------------------------------------


def _sub(xs, idx: list[int]) -> list:
    return [xs[i] for i in idx]


def _plan(name: str, lists: list[list[Tensor]], volatile: tuple[int, ...], fusable):
    """``(tables, rest)``: the tables of each launch group of ``lists`` and the indices the
    kernels cannot take, reused while the tensors are alike
    (:func:`swgl.kernels.launches_for`); ``volatile`` are the indices of the lists that are
    fresh tensors at each step. The lists' first three are (params, grads or snapshots,
    stabilities); ``fusable(i)`` may exclude more."""
    from swgl import kernels

    def split() -> tuple[list[list[int]], list[int]]:
        groups, _ = kernels.split(*lists[:3])
        groups = [idx for idx in ([i for i in idx if fusable(i)] for idx in groups.values())
                  if idx]
        fused = {i for idx in groups for i in idx}
        return groups, [i for i in range(len(lists[0])) if i not in fused]

    _, rest, tables = kernels.launches_for(name, lists, volatile, split)
    return tables, rest


def _before_fused(params, grads, state, steps, hp: Hyper, ctx: Context):
    s = state["stability"]
    if _compiled_here(params):
        return _before_compiled(params, grads, state, steps, hp, ctx)
    tables, rest = _plan("v4.before", [params, grads, s], (1,), lambda i: True)
    if ctx.check is not None:  # the flag is ours to set: it is read by every pass below
        _set_found(tables, grads, rest, ctx)
    if not tables:
        return _before_foreach(params, grads, state, steps, hp, ctx)
    from swgl.kernels import triton_importance as ti  # imports Triton

    launches = [ti.Group(lau, ctx.found) for lau in tables]
    # per tensor: the sums of s ([T]), and of the capped g^2 for ctx.g2_sum ([2, T])
    sums = [grp.ema(hp, ctx.grad_scale, g2=ctx.g2_sum is not None) for grp in launches]
    if rest:
        sums.append(_rest_ema(grads, s, rest, hp, ctx).to(sums[0].device))
    k = _strength(_hand_g2(torch.cat(sums, -1), ctx), _numel(params, ctx), hp, ctx)
    if hp.mode == "update":
        return [(k, g) for g in grads]
    parts = [grp.grad_sums(k, hp) for grp in launches]
    if rest:
        parts.append(_rest_grad_sums(grads, s, rest, k, hp).to(parts[0].device))
    rho = progress_ratio(*ctx.reduce_sum(torch.stack(parts).sum(0)), hp)
    for grp in launches:
        grp.rescale_grads(k, rho, hp)
    if rest:
        _rest_rescale_grads(grads, s, rest, k, rho, hp, ctx)
    return None


def _set_found(tables, grads, rest: list[int], ctx: Context) -> None:
    """``ctx.found`` from the grads: a check kernel per launch group, ``ctx.check`` the rest."""
    found = ctx.found
    if not tables or any(lau.device != found.device for lau in tables):
        found.copy_(ctx.check(grads).reshape(found.shape).to(found))
        return
    from swgl.kernels import triton_swgl  # imports Triton

    for lau in tables:
        triton_swgl.nonfinite(lau, found)
    if rest:
        found.copy_(torch.maximum(found, ctx.check(_sub(grads, rest)).reshape(found.shape)
                                  .to(found)))


def _after_fused(params, snapshots, state, steps, aux, hp: Hyper, ctx: Context) -> None:
    s = state["stability"]
    grads = [g for _, g in aux]
    k = aux[0][0]
    if _compiled_here(params):
        _after_compiled(params, snapshots, state, steps, aux, hp, ctx)
        return
    tables, rest = _plan("v4.after", [params, snapshots, s, grads], (1, 3),
                         lambda i: _fusable_after(params[i], grads[i], s[i]))
    if not tables:
        _after_foreach(params, snapshots, state, steps, aux, hp, ctx)
        return
    from swgl.kernels import triton_importance as ti  # imports Triton

    launches = [ti.Update(lau) for lau in tables]
    parts = [lau.sums(k, hp) for lau in launches]
    if rest:
        parts.append(_rest_update_sums(params, snapshots, grads, s, rest, k, hp)
                     .to(parts[0].device))
    rho = progress_ratio(*ctx.reduce_sum(torch.stack(parts).sum(0)), hp)
    for lau in launches:
        lau.apply(k, rho, hp)
    if rest:
        _rest_apply_update(params, snapshots, s, rest, k, rho, hp)


def _compiled_here(params) -> bool:
    """The CPU takes the compiled functions; CUDA (or Triton's interpreter) the kernels."""
    from swgl.kernels import compiled

    return compiled.runs_on(params[0].device)


# -- the part of a fused call that takes foreach (``rest``: indices into the lists) ----------


def _rest_ema(grads, s, rest: list[int], hp: Hyper, ctx: Context) -> Tensor:
    """The EMA over ``rest``; returns its per-tensor sums of ``s`` ([T]), and with
    ``ctx.g2_sum`` set, of the capped ``g^2`` too ([2, T])."""
    g2 = _ema_foreach(_sub(grads, rest), _sub(s, rest), hp, ctx)
    sums = torch.stack(torch._foreach_norm(_sub(s, rest), 1))
    return sums if g2 is None else torch.stack([sums, g2])


def _rest_grad_sums(grads, s, rest: list[int], k: Tensor, hp: Hyper) -> Tensor:
    g32 = [g.float() for g in _sub(grads, rest)]
    g2 = torch._foreach_mul(g32, g32)
    torch._foreach_neg_(g2)
    return torch.stack(_sums(g2, _factors_foreach(_sub(s, rest), k, hp), Context()))


def _rest_rescale_grads(grads, s, rest: list[int], k: Tensor, rho: Tensor, hp: Hyper,
                        ctx: Context) -> None:
    grads, s = _sub(grads, rest), _sub(s, rest)
    ok = ctx.ok(s[0].device)
    c = _factors_foreach(s, k, hp)
    torch._foreach_mul_(c, rho)
    torch._foreach_mul_(c, [g.float() for g in grads])
    for out, new in zip(grads, c):
        _commit(out, new, ok)


def _rest_update_sums(params, snapshots, grads, s, rest: list[int], k: Tensor,
                      hp: Hyper) -> Tensor:
    w = [p.float() for p in _sub(params, rest)]
    u = torch._foreach_sub(w, [b.float() for b in _sub(snapshots, rest)])
    gu = torch._foreach_mul(u, [g.float() for g in _sub(grads, rest)])
    return torch.stack(_sums(gu, _factors_foreach(_sub(s, rest), k, hp), Context()))


def _rest_apply_update(params, snapshots, s, rest: list[int], k: Tensor, rho: Tensor,
                       hp: Hyper) -> None:
    c = _factors_foreach(_sub(s, rest), k, hp)
    torch._foreach_mul_(c, rho)
    before = [b.float() for b in _sub(snapshots, rest)]
    u = torch._foreach_sub([p.float() for p in _sub(params, rest)], before)
    torch._foreach_mul_(u, c)
    torch._foreach_add_(u, before)   # into u: the snapshots are only read
    torch._foreach_copy_(_sub(params, rest), u)


# -- compiled: the CPU's fused variant, the per-tensor formulas through torch.compile
# -- (swgl.kernels.compiled); small tensors take foreach ------------------------------------


def _before_compiled(params, grads, state, steps, hp: Hyper, ctx: Context):
    from swgl.kernels import compiled as cc

    s = state["stability"]
    big, rest = cc.split(params, grads, s)
    ok = ctx.ok(torch.device("cpu"))
    scale, keep = cc.scalar(ctx.grad_scale), cc.scalar(1.0 - hp.alpha)
    if hp.lambda_reg > 0.0:
        ema = cc.compiled(_ema_one)
        sums = [ema(cc.flat(grads[i]), cc.flat(s[i]), ok, scale, keep) for i in big]
    else:   # k is 0 whatever the sums of s (v6's default): the EMA alone
        ema = cc.compiled(_ema_no_sum)
        for i in big:
            ema(cc.flat(grads[i]), cc.flat(s[i]), ok, scale, keep)
        sums = [torch.zeros(()) for _ in big]
    if ctx.g2_sum is not None:
        sums = _with_g2(sums, [cc.flat(grads[i]) for i in big], scale, ctx, _g2_sum_cpu)
    if rest:
        sums += _rest_ema(grads, s, rest, hp, ctx).unbind(-1)
    k = _strength(_hand_g2(torch.stack(sums, -1), ctx), _numel(params, ctx), hp, ctx)
    if hp.mode == "update":
        return [(k, g) for g in grads]
    min_c = cc.scalar(1.0 / hp.max_boost)
    grad_sums = cc.compiled(_grad_sums_one)
    parts = [grad_sums(cc.flat(grads[i]), cc.flat(s[i]), k, min_c) for i in big]
    if rest:
        parts.append(_rest_grad_sums(grads, s, rest, k, hp))
    rho = progress_ratio(*ctx.reduce_sum(torch.stack(parts).sum(0)), hp)
    rescale = cc.compiled(_rescale_grad_one)
    for i in big:
        rescale(cc.flat(grads[i]), cc.flat(s[i]), ok, k, rho, min_c)
    if rest:
        _rest_rescale_grads(grads, s, rest, k, rho, hp, ctx)
    return None


def _after_compiled(params, snapshots, state, steps, aux, hp: Hyper, ctx: Context) -> None:
    from swgl.kernels import compiled as cc

    s = state["stability"]
    grads = [g for _, g in aux]
    k, min_c = aux[0][0], cc.scalar(1.0 / hp.max_boost)
    big, rest = cc.split(params, snapshots, s, grads)
    update_sums = cc.compiled(_update_sums_one)
    parts = [update_sums(*(cc.flat(xs[i]) for xs in (params, snapshots, grads, s)), k, min_c)
             for i in big]
    if rest:
        parts.append(_rest_update_sums(params, snapshots, grads, s, rest, k, hp))
    rho = progress_ratio(*ctx.reduce_sum(torch.stack(parts).sum(0)), hp)
    apply = cc.compiled(_apply_update_one)
    for i in big:
        apply(*(cc.flat(xs[i]) for xs in (params, snapshots, s)), k, rho, min_c)
    if rest:
        _rest_apply_update(params, snapshots, s, rest, k, rho, hp)


def _fusable_after(p: Tensor, g: Tensor, s: Tensor) -> bool:
    """The after kernels also read the grads in the params' dtype."""
    from swgl import kernels

    return kernels.fusable_tensor(p, g, s) and g.dtype == p.dtype


def _factor_from_state(s: Tensor, step: int, hp: Hyper,
                       group_mean: Tensor | float | None = None):
    """What :mod:`swgl.stats` reports: ``(s, c)``, with ``group_mean`` the group's mean of
    ``s``, as the step reads it (the tensor's own mean when not given); ``rho`` depends on the
    step's grads and is not included."""
    m = s.mean() if group_mean is None else group_mean
    return s, factor(s, hp.lambda_reg / (m + hp.eps * hp.eps), hp)


V4 = Rule(
    name="v4",
    before=Variants(_before_single, _before_foreach, _before_fused),
    after=Variants(_after_single, _after_foreach, _after_fused),
    options=frozenset({"alpha", "lambda_reg", "eps", "max_boost", "mode"}),
    state=(("stability", 0.0),),
    snapshot=True,
    modes=("update", "grad"),
    device_guard=True,
    factor=_factor_from_state,
    # swgl.optim's fused steps: swgl.kernels.triton_importance_optim (SWGL and SWGL.wrap
    # run the fused variants above, swgl.kernels.triton_importance)
    kernel="v4",
    cpu_fused=True,
    fused_checks=True,
    defaults=(("alpha", 0.999), ("lambda_reg", 3.0)),
    host_guard=host_guard,
    graphable=True,
)
