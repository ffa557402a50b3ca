r"""``v5``, the default rule (v4 with consolidation at detected shifts): ``v4``'s importance
damping, plus a pull toward the weights the group had when its gradient statistics last
jumped, weighted by the importance the weights had then.

For a param group, at each step (``t`` counts the group's steps)::

    v4's step (swgl.rules.importance): s, c, rho, w = w_before + rho * c * u

    n     = sum over elements of min(g^2, R_MAX)   # the group's, before the base step:
                                                   # v4's capped g^2, summed by v4's before
    f     = f + (1 - B_FAST) (n - f);  q = q + (1 - B_SLOW) (n - q)      # f, q start at 0
    shift = t > WARMUP  and  t - t_last > REFRACTORY
            and  f / (1 - B_FAST^t) > SHIFT_RATIO * q / (1 - B_SLOW^t)
    on a shift, before the base step (t_last = t):
        F  = DECAY * F + s / (m + eps^2)               # m: the group's mean of s (v4's)
        mu = w
    after v4's update, once the group has consolidated:
        w  = (w + k mu) / (1 + k),  k = consolidation * F * fade   # implicit: stable for any k
        fade = min(1, horizon / (t - t_last + 1))   # horizon = consolidation_horizon; 0: fade = 1

``s`` is v4's EMA of the squared gradient (its estimate of the diagonal Fisher information),
so ``F`` holds, per element, how much the weights mattered at the last shifts, relative to the
group (each consolidation adds a term of mean 1; ``DECAY`` bounds the sum by 5, so a long
stream of shifts cannot freeze the network). The pull is elastic weight consolidation in its
implicit form, with the task boundaries it needs found from the gradients: a new
distribution raises the loss, so the squared gradient norm's fast EMA (horizon ~10 steps)
jumps above its slow one (~100 steps). No boundary is given; on a stationary stream the
detector stays silent and ``v5`` is ``v4``.

Why: at the plain optimizer's tuned learning rate, ``v4`` gained little on streams where old
tasks are overwritten (docs/results.md, "Earn its place"): an importance EMA forgets an
old task's importance within its horizon, and damping alone only slows the drift. An anchor
taken at a shift, weighted by the importance frozen then, bounds the drift of the weights an
old task relied on. The constants were chosen by the search in
``benchmarks/rule_search.py`` (docs/results.md). The pull's strength is the option
``consolidation`` (default :data:`STRENGTH`, 0.03; 0: no pull, the consolidation still kept),
and ``consolidation_horizon`` (default :data:`HORIZON`, 20; 0: it never fades) makes it fade
from that many steps after a shift on, so a short task is held strongly and a long one is
not frozen: chosen against the tuned plain optimizer in the seventh session (it meets the
+2-points goal with SGD, not with Adam; docs/results.md). The detector's and the decay's
constants are the module's.

Phases. ``before`` runs v4's ``before`` (any variant), which also sums ``n``
(``Context.g2_sum``; the Triton EMA kernel in its read of the grads), then the detector (on
CUDA's fused variant one Triton launch, the skip flag's masking included) and, on a shift, the
consolidation; ``after`` runs v4's ``after``, then the pull. On the CPU the consolidation and
the pull are skipped on the host when they would change nothing (a host read there costs no
sync), and the fused variant compiles the pull per large tensor (one pass: read w, mu, F; write
w). On CUDA, with no host sync: the fused variant runs both as Triton kernels gated by device
flags (:mod:`swgl.kernels.triton_consolidation`: a kernel whose flag is 0 exits at once; the
pull's flag is its strength, faded and gated), the foreach variant as masked passes. A non-
finite step (``Context.found``) leaves the detector, ``F`` and ``mu`` as they were and pulls
nothing (``before`` hands the flag to ``after`` in ``aux``: ``(k, g, found)`` per param).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import Tensor

from swgl.rules.base import Context, Hyper, Rule, Variants, add_one_, cpu_scalar
from swgl.rules.importance import V4

__all__ = ["V5", "around_fused_step", "freshest", "freshest_on_host", "mark_shift", "STRENGTH",
           "HORIZON", "DECAY", "SHIFT_RATIO", "REFRACTORY", "WARMUP", "B_FAST", "B_SLOW"]

#: the default of ``consolidation``: the pull's strength per unit of consolidated importance
STRENGTH = 0.03
#: the default of ``consolidation_horizon``: the pull fades from this many steps after a shift
HORIZON = 20.0
#: decay of the consolidated importance at each new shift (its sum is bounded by 1 / (1 - DECAY))
DECAY = 0.8
#: a shift: the fast EMA of the squared grad norm above this many times the slow one
SHIFT_RATIO = 2.0
#: steps after a shift during which no other shift is detected
REFRACTORY = 50
#: steps from the start during which no shift is detected (a longer one, 100 or 200, was
#: measured and lost elsewhere what it gained on short tasks: docs/results.md)
WARMUP = 50
#: the detector's EMA decays (horizons ~10 and ~100 steps)
B_FAST, B_SLOW = 0.9, 0.99

#: the detector's state, one per param (every param of a group holds the group's copy):
#: ``[t, f, q, t_last]``
DETECTOR = (0.0, 0.0, 0.0, 0.0)


def _inv_mean(k: Tensor, params, s: list[Tensor], hp: Hyper, ctx: Context) -> Tensor:
    """``1 / (m + eps^2)`` from v4's ``k = lambda_reg / (m + eps^2)`` (or recomputed when
    ``lambda_reg`` is 0)."""
    if hp.lambda_reg > 0.0:
        return k / hp.lambda_reg
    total = ctx.reduce_sum(torch.stack([x.sum() for x in s])).sum()
    numel = sum(map(Tensor.numel, params)) if ctx.numels is None else sum(ctx.numels)
    return 1.0 / (total / numel + hp.eps * hp.eps)


def _step(n, t, f, q, t_last):
    """The detector's step on its four values and the signal ``n``, as 0-d tensors or as
    Python floats: ``(t, f, q, shift)``."""
    t = t + 1.0
    f = f + (1.0 - B_FAST) * (n - f)
    q = q + (1.0 - B_SLOW) * (n - q)
    f_hat = f / (1.0 - B_FAST ** t)
    q_hat = q / (1.0 - B_SLOW ** t)
    return t, f, q, (t > WARMUP) & (t - t_last > REFRACTORY) & (f_hat > SHIFT_RATIO * q_hat)


def _detect(n: Tensor, det: Tensor) -> tuple[Tensor, Tensor]:
    """The group's detector ``det = [t, f, q, t_last]`` advanced by a step of signal ``n``
    (the group's capped g^2 sum, a 0-d); returns ``(new detector, shift)``. It reads no skip
    flag (:func:`_advance` masks both). The reference of the kernel
    :func:`swgl.kernels.triton_consolidation.detect`."""
    t, f, q, shift = _step(n.to(det.device), *det)
    return torch.stack([t, f, q, torch.where(shift, t, det[3])]), shift


def _detect_on_host(n: Tensor, dets: list[Tensor]) -> tuple[Tensor, Tensor]:
    """:func:`_detect` on the host, for the CPU (two reads, no sync there; its fifteen 0-d
    ops took 0.24 ms a step, a tenth of a small model's), from the freshest copy of ``dets``
    (:func:`freshest`): the same step in float64, the new values then stored in fp32."""
    t, f, q, t_last = freshest_on_host(dets)
    t, f, q, shift = _step(float(n), t, f, q, t_last)
    return torch.tensor([t, f, q, t if shift else t_last]), torch.tensor(shift)


def freshest(dets: list[Tensor]) -> Tensor:
    """The group's detector among its params' copies ``dets``: the one with the most steps.
    A step writes the new detector into the copies of the params it gathered (those with a
    grad), so a param that missed steps (frozen for a while, unused) holds an older copy,
    which must not set the group's steps and last shift back. On the device: no host read."""
    if len(dets) == 1:
        return dets[0]
    rows = torch.stack(dets)
    # index_select: a 0-d index tensor would be read on the host (a sync on CUDA)
    return rows.index_select(0, rows[:, 0].argmax().reshape(1))[0]


def freshest_on_host(dets: list[Tensor]) -> list[float]:
    """:func:`freshest`'s values, read on the host (two ops; a sync on a GPU)."""
    return max(torch.stack(dets).tolist()) if len(dets) > 1 else dets[0].tolist()


def _advance(n: Tensor, dets: list[Tensor], found: Tensor | None,
             kernel: bool) -> tuple[Tensor, Tensor]:
    """``(new detector, shift)`` for this step from the group's copies ``dets``
    (:func:`freshest`), both left as they were (the freshest copy, no shift) where the skip
    flag ``found`` is set: one Triton launch (``kernel``: it advances a copy of the freshest
    in place and returns it; the shift is a 0-d fp32 flag), :func:`_detect`'s torch ops, or
    on the CPU, unmasked, :func:`_detect_on_host`. ``dets`` are left as they were: the caller
    stores the new values once a shift's consolidation has read the old ones (v7 reads the
    last shift)."""
    if found is None and dets[0].device.type == "cpu" and not kernel:   # the CPU's unmasked step
        return _detect_on_host(n, dets)
    det = freshest(dets)
    if kernel:
        if det is dets[0]:   # the only copy (with more, freshest's stack made a new tensor)
            det = det.clone()
        from swgl.kernels import triton_consolidation as tc  # imports Triton

        shift = tc.detect(n, det, found, b_fast=B_FAST, b_slow=B_SLOW, ratio=SHIFT_RATIO,
                          refractory=REFRACTORY, warmup=WARMUP)
        return det, shift
    new, shift = _detect(n, det)
    if found is not None:
        ok = Context(found=found).ok(det.device)
        shift = shift & ok
        new = torch.where(ok, new, det)
    return new, shift


def mark_shift(dets: list[Tensor]) -> Tensor:
    """Record a shift now in every copy of the group's detector (its last shift = its steps,
    from the freshest copy), for a boundary the user names: the pull starts and the refractory
    period runs as after a detected shift. Returns the 0-d True flag the consolidation reads."""
    new = freshest(dets).clone()
    new[3] = new[0]
    torch._foreach_copy_(dets, [new] * len(dets))
    return torch.ones((), dtype=torch.bool, device=new.device)


def _boundary(params, state, hp: Hyper, ctx: Context) -> None:
    """A task boundary the user names: the consolidation of a shift now (``F = DECAY F +
    s / (m + eps^2)``, ``mu = w``), and the detector told (:func:`mark_shift`)."""
    shift = mark_shift(state["detector"])
    inv_m = _inv_mean(None, params, state["stability"],
                      dataclasses.replace(hp, lambda_reg=0.0), ctx)   # m from s itself
    _consolidate(params, state, shift, inv_m, "foreach")


def _kernel_tables(params, state, names=("consolidated", "stability", "anchor"),
                   key: str = "v5") -> tuple[list, list[int]]:
    """The Triton launch tables of (params, *the state lists ``names``) and the indices the
    kernels cannot take (reused while the tensors are alike; ``key`` names the plan: v6 asks
    for its own state's)."""
    from swgl import kernels

    lists = [params, *(state[name] for name in names)]

    def split() -> tuple[list[list[int]], list[int]]:
        groups, rest = kernels.split(*lists[:3], extra=lists[3:])
        return list(groups.values()), rest

    _, rest, tables = kernels.launches_for(key, lists, (), split)
    return tables, rest


def _on_kernels(params, variant: str) -> bool:
    """The fused variant off the CPU's compiled path: Triton (CUDA, or its interpreter)."""
    from swgl.kernels import compiled  # imports torch._dynamo: only when called

    return variant == "fused" and not compiled.runs_on(params[0].device)


def _subset(state, params, idx: list[int]):
    return [params[i] for i in idx], {k: [v[i] for i in idx] for k, v in state.items()}


def _consolidate(params, state, shift: Tensor, inv_m: Tensor | None, variant: str,
                 importance: bool = True, anchor: bool = True, plan=None) -> None:
    """On a shift: ``F = DECAY F + s / (m + eps^2)`` (``importance``; ``inv_m`` is
    ``1 / (m + eps^2)``) and ``mu = w`` (``anchor``). ``plan``: :func:`_kernel_tables`'
    result when the caller has it."""
    if shift.device.type == "cpu" and not bool(shift):
        return
    if _on_kernels(params, variant):
        from swgl.kernels import triton_consolidation as tc  # imports Triton

        tables, rest = plan or _kernel_tables(params, state)
        for lau in tables:
            tc.consolidate(lau, shift, inv_m, DECAY, importance, anchor)
        if not rest:
            return
        params, state = _subset(state, params, rest)
    F, mu, s = state["consolidated"], state["anchor"], state["stability"]
    # masked on CUDA, no host sync: a factor of 1 / 0 where there is no shift
    weight = shift.float() if shift.device.type != "cpu" else torch.ones(())
    if importance:
        keep = 1.0 - weight * (1.0 - DECAY)
        gain = weight * inv_m
    if variant == "single":
        for f, m, si, p in zip(F, mu, s, params):
            if importance:
                f.mul_(keep).add_(si * gain)
            if anchor:
                m.lerp_(p.float(), weight)
        return
    if importance:
        torch._foreach_mul_(F, keep)
        torch._foreach_add_(F, torch._foreach_mul(s, gain))
    if anchor:
        step = torch._foreach_sub([p.float() for p in params], mu)   # mu += weight (w - mu)
        torch._foreach_mul_(step, weight)
        torch._foreach_add_(mu, step)


def _pull_one(p: Tensor, f: Tensor, mu: Tensor, strength) -> None:
    """``w = (w + k mu) / (1 + k)``, ``k = strength F``, in place, for one tensor."""
    k = f * strength
    p.copy_((p.float() + k * mu) / (1.0 + k))


def _pull(params, state, det: Tensor, strength: float, variant: str,
          ok: Tensor | None = None, horizon: float = 0.0, plan=None) -> None:
    """Once the group has consolidated (and, given ``ok``, where it is set), the pull on every
    param: per tensor (``single``), as foreach passes, or fused (Triton on CUDA, compiled per
    large tensor on the CPU, foreach for the rest). With a ``horizon``, its strength fades
    after it. On CUDA the gate and the fade are one device factor, read by the kernels."""
    cpu = det.device.type == "cpu"
    if strength == 0.0:
        return
    if cpu:   # the gate read on the host: no 0-d ops (each costs microseconds a step)
        if not (det[3].item() > 0 and (ok is None or bool(ok))):
            return
        active = None
    else:
        active = det[3] > 0 if ok is None else (det[3] > 0) & ok
    scale = None   # a device factor (CUDA): the fade, the gate
    if horizon > 0.0:
        steps = det[0] - det[3] + 1.0
        if cpu:
            strength = strength * min(1.0, horizon / float(steps))
        else:
            scale = (horizon / steps).clamp(max=1.0)
    if not cpu and (ok is not None or variant == "fused"):
        scale = active.float() if scale is None else scale * active.float()
    F, mu = state["consolidated"], state["anchor"]
    if variant == "single":
        for p, f, m in zip(params, F, mu):
            _pull_one(p, f, m, strength if scale is None else strength * scale)
        return
    kernels = _on_kernels(params, variant)
    if kernels:
        from swgl.kernels import triton_consolidation as tc  # imports Triton

        tables, rest = plan or _kernel_tables(params, state)
        # the Triton interpreter runs on the CPU, where the gate was read above: a factor 1
        gate = cpu_scalar(1.0) if active is None else active.float()
        k = strength * (gate if scale is None else scale)
        for lau in tables:
            tc.pull(lau, k)
        params, state = _subset(state, params, rest)
        if not params:
            return
        F, mu = state["consolidated"], state["anchor"]
    elif variant == "fused":   # the CPU: compiled per large tensor
        from swgl.kernels import compiled as cc

        big, rest = cc.split(params, F, mu)
        pull = cc.compiled(_pull_one)
        for i in big:
            pull(cc.flat(params[i]), cc.flat(F[i]), cc.flat(mu[i]), cc.scalar(strength))
        params, F, mu = ([xs[i] for i in rest] for xs in (params, F, mu))
        if not params:
            return
    # masked and faded without a host read (on the CPU both were read above)
    if scale is None:
        k = torch._foreach_mul(F, cpu_scalar(strength) if cpu else strength)
    else:
        k = torch._foreach_mul(F, strength * scale)
    if all(p.dtype == torch.float32 for p in params):   # in place: the same ops, no copy
        torch._foreach_addcmul_(params, k, mu)
        add_one_(k)
        torch._foreach_div_(params, k)
        return
    w = torch._foreach_addcmul([p.float() for p in params], k, mu)
    add_one_(k)
    torch._foreach_div_(w, k)
    torch._foreach_copy_(params, w)


def _consolidate_fisher(params, state, shift: Tensor, aux, hp: Hyper, ctx: Context,
                        variant: str) -> None:
    """v5's consolidation in its ``before`` phase, from v4's ``k`` (``aux``)."""
    _consolidate(params, state, shift, _inv_mean(aux[0][0], params, state["stability"], hp, ctx),
                 variant)


def _before(v4_before, variant: str, consolidate=_consolidate_fisher):
    """v5's ``before`` phase; ``consolidate(params, state, shift, aux, hp, ctx, variant)`` is
    what a shift does (v6 passes its own)."""
    def before(params, grads, state, steps, hp: Hyper, ctx: Context):
        det = state["detector"]
        # v4 first: in mode="update" (v5's only mode) its before leaves the grads as they
        # were, so the detector may follow it, and its EMA pass sums the detector's signal n
        # from its own read of the grads (no pass of the detector's own). After it the skip
        # flag is known too (a fused v4 sets it in its own passes).
        g2: list[Tensor] = []
        aux = v4_before(params, grads, state, steps, hp, ctx.with_g2_sum(g2))
        new, shift = _advance(g2[0], det, ctx.found, _on_kernels(params, variant))
        consolidate(params, state, shift, aux, hp, ctx, variant)
        torch._foreach_copy_(det, [new] * len(det))
        return aux
    return before


def _with_flag(before):
    """v5's ``before``; its ``aux`` also carries the step's skip flag, which the pull reads
    (the caller's ``after`` context has none): ``(k, g, found)`` per param."""
    def call(params, grads, state, steps, hp: Hyper, ctx: Context):
        return [(k, g, ctx.found) for k, g in before(params, grads, state, steps, hp, ctx)]
    return call


def _after(v4_after, variant: str):
    def after(params, snapshots, state, steps, aux, hp: Hyper, ctx: Context) -> None:
        v4_after(params, snapshots, state, steps, [(k, g) for k, g, _ in aux], hp, ctx)
        det = state["detector"][0]
        # a skipped step (its grads not finite) is not pulled either
        _pull(params, state, det, hp.consolidation, variant,
              ok=Context(found=aux[0][2]).ok(det.device), horizon=hp.consolidation_horizon)
    return after


def around_fused_step(params, grads, state, hp: Hyper, found: Tensor,
                      v4_step: Callable[[], Tensor], n: Tensor) -> None:
    """v5 around a fused v4 step that also steps the optimizer (swgl.optim's Triton path),
    with no host sync: ``v4_step()`` runs it and returns v4's ``k``; ``found`` is the step's
    skip flag, already set; ``n`` is the detector's signal, summed by v4's first pass
    (:func:`swgl.kernels.triton_importance_optim.check`). The same math as the phases, in
    this order: the detector (its kernel); on a shift ``mu = w`` (before the step, as the
    ``before`` phase takes it); the step; on a shift ``F = DECAY F + s / (m + eps^2)`` (the
    new ``s``, as ``before`` reads it); the pull."""
    det = state["detector"]
    ctx = Context(found=found)
    new, shift = _advance(n, det, found, kernel=True)
    ok = ctx.ok(new.device)
    # the launch tables, looked up once for the three passes
    plan = _kernel_tables(params, state) if _on_kernels(params, "fused") else None
    _consolidate(params, state, shift, None, "fused", importance=False, plan=plan)
    k = v4_step()
    _consolidate(params, state, shift, _inv_mean(k, params, state["stability"], hp, ctx),
                 "fused", anchor=False, plan=plan)
    torch._foreach_copy_(det, [new] * len(det))
    _pull(params, state, new, hp.consolidation, "fused", ok, hp.consolidation_horizon, plan)


V5 = Rule(
    name="v5",
    before=Variants(*(_with_flag(_before(getattr(V4.before, v), v))
                      for v in ("single", "foreach", "fused"))),
    after=Variants(_after(V4.after.single, "single"), _after(V4.after.foreach, "foreach"),
                   _after(V4.after.fused, "fused")),
    options=frozenset({"alpha", "lambda_reg", "eps", "max_boost", "mode", "consolidation",
                       "consolidation_horizon"}),
    state=(("stability", 0.0), ("consolidated", 0.0), ("anchor", "param"),
           ("detector", DETECTOR)),
    snapshot=True,
    modes=("update",),
    device_guard=True,
    factor=V4.factor,
    kernel="v4",
    cpu_fused=True,
    fused_checks=True,
    defaults=(*V4.defaults, ("consolidation", STRENGTH), ("consolidation_horizon", HORIZON)),
    around_fused_step=around_fused_step,
    host_guard=V4.host_guard,   # its foreach before is v4's
    graphable=True,
    boundary=_boundary,
)
