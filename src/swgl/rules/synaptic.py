r"""``v6``, the default rule: ``v5``'s detector and pull, with the importance of synaptic
intelligence (SI, Zenke et al. 2017) in place of the Fisher's, normalised by its mean over the
group, and no damping by default.

For a param group, at each step (``g``: the grads, without the loss scale)::

    v4's EMA s and, only when lambda_reg > 0, v4's damped step (swgl.rules.importance)
    v5's detector on n = sum over elements of min(g^2, R_MAX)   (swgl.rules.consolidation)
    on a shift, before the base step:
        Om   = max(0, path / ((w - mu)^2 + XI))   # SI's importance of what was learned since
                                                  # the last shift (mu: the weights then)
        F    = F + Om / mean(Om)                  # the group's mean: each shift adds a term
        path = 0;  mu = w                         # of mean 1
    after the base step (and v4's):
        w    = (w + k mu) / (1 + k),  k = consolidation * F * fade   # implicit: stable for any k
        path = path - g (w - w_before)            # SI's path integral, the whole step's change

``fade`` is v5's (``consolidation_horizon``; 0, the default: no fade). ``path`` sums, per
element, how much its moves lowered the loss since the last shift; SI divides it by how far
the element moved (``XI`` keeps still elements finite) and keeps the sum over tasks. Divided
by its mean over the group, the importance is a pure number: the pull's strength no longer
scales with the optimizer's step as SI's penalty does (SI's best strength is about 10 with
Adam and 1 with SGD; here one strength serves both, docs/results.md). Compared with v5, the
importance is kept for the whole stream rather than faded (v5's ``DECAY`` and horizon): a
weight an old task needed stays held.

Why: against the plain optimizer at its tuned learning rate, v5 gains 2 points or more in
three regimes with SGD but with Adam in one; SI run at v5's detected shifts gains with Adam
but needs a strength per optimizer; v4's damping removes SI's gain with Adam. ``v6`` chose
the strength (:data:`STRENGTH`) and ``lambda_reg`` 0 by that protocol (the eleventh session,
docs/results.md, "Earn its place"); the twelfth session made it the default, after a run of
plain, v5 and v6 side by side (v6: +2 in three regimes with SGD and in two with Adam, v5 in
three and one; ahead of v5 on the label-permuted stream). ``lambda_reg`` > 0 turns v4's
damping back on; ``alpha``, ``eps`` and ``max_boost`` act through that damping only (and
``alpha`` on the EMA that ``SWGL.stats`` reports).

``v7`` (opt-in, eighteenth session) is v6 with each shift's term divided by the length ``T``
of the segment it closes (the steps since the last shift, at least :data:`MIN_SEGMENT`)::

    F    = F + Om / mean(Om) / T,     k = consolidation * F * fade   (consolidation 0.3)

so that the pull a segment's weights get, summed over a following segment of the same length,
is the same for any length: v6's best strength fell as its tasks grew longer (3e-3 on
78-step tasks, 3e-4 on 780-step ones), and v7's one strength matches it across them. Against
the plain optimizer at its tuned lr (docs/results.md, eighteenth session) it is level with v6
or ahead in seven of the eight image cells (split domain-IL +10.0 / +8.6 with Adam / SGD,
against v6's +2.2 / +5.7; digits' 100-step tasks +6.6 / +5.6 against +1.5 / +1.9), and
behind it on Adam's long tasks (+0.6 against +1.3 at ten seeds) and on the label-permuted
stream, where the old labels are obsolete and a stronger pull holds them (SGD -1.4, AdamW
+0.9, against v6's -0.3 / +1.9): not the default.

Phases: ``before`` is v5's with this consolidation; ``after`` runs v4's ``after`` (only when
``lambda_reg`` > 0, else the base step stands), the pull (v5's), then the path. ``before``
hands ``after`` its loss scale and skip flag (in ``aux``: ``(k, g, Context)`` per param): a
step skipped for non-finite grads (``Context.found``) leaves the path and the weights to the
after phase as they were, and the path's ``g`` is divided by the loss scale the grads carried.
On the CPU the consolidation is skipped on the host when no shift was found. On CUDA, with no
host sync: the ``fused`` variant runs v6's Triton kernels (:mod:`swgl.kernels.triton_synaptic`:
the consolidation, two launches that exit at once but at a shift, and the pull and the path in
one pass), with v4's fused EMA pass and v5's detector kernel; the ``foreach`` variant masks
the consolidation by the shift flag. On the CPU the ``fused`` variant compiles v4's passes and
the pull with the path, one function per large tensor (:mod:`swgl.kernels.compiled`: the
after phase about 4x as fast as with the path in foreach passes, on a 6.3M-param MLP).
swgl.optim's fused AdamW / SGD run v6 around v4's fused optimizer step
(:func:`around_fused_step`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import torch
from torch import Tensor

from swgl.rules import consolidation as v5
from swgl.rules.base import Context, Hyper, Rule, Variants, fp32
from swgl.rules.importance import R_MAX, V4, _commit

__all__ = ["V6", "V7", "around_fused_step", "segment", "STRENGTH", "PER_STEP_STRENGTH",
           "MIN_SEGMENT", "XI"]

#: the default of ``consolidation`` under v6: the pull per unit of normalised importance
STRENGTH = 3e-4
#: the default of ``consolidation`` under v7: the pull per unit of normalised importance per
#: step of the segment it was learned in
PER_STEP_STRENGTH = 0.3
#: v7: the shortest segment a shift's importance is divided by: the detector finds none
#: shorter (its refractory period and warm-up); a boundary the user names sooner counts as it
MIN_SEGMENT = float(v5.REFRACTORY + 1)
#: SI's damping of its importance (``(w - mu)^2 + XI``), in squared weight units: SI's own
XI = 0.1


def _state_tables(params, state) -> tuple[list, list[int]]:
    """The Triton launch tables of (params, consolidated, anchor, path) and the indices the
    kernels cannot take (v5's lookup, :func:`swgl.rules.consolidation._kernel_tables`)."""
    return v5._kernel_tables(params, state, ("consolidated", "anchor", "path"), key="v6")


def _after_tables(params, grads, snapshots, state) -> tuple[list, list[int]]:
    """The Triton launch tables of (params, grads, consolidated, anchor, path, snapshots) and
    the indices the kernels cannot take; the grads and the snapshots may move between steps."""
    from swgl import kernels

    lists = [params, grads, state["consolidated"], state["anchor"], state["path"], snapshots]

    def split() -> tuple[list[list[int]], list[int]]:
        groups, rest = kernels.split(*lists[:3], extra=lists[3:5])
        # the kernel reads a snapshot in its param's dtype
        alike = {i for i, (p, b) in enumerate(zip(params, snapshots)) if b.dtype == p.dtype
                 and b.is_contiguous() and b.device == p.device}
        kept = [idx for idx in ([i for i in idx if i in alike] for idx in groups.values())
                if idx]
        taken = {i for idx in kept for i in idx}
        return kept, [i for i in range(len(params)) if i not in taken]

    _, rest, tables = kernels.launches_for("v6.after", lists, (1, 5), split)
    return tables, rest


def _importance(w, mu, path, variant: str) -> list[Tensor]:
    """``Om = max(0, path / ((w - mu)^2 + XI))`` per tensor (``w`` in fp32): per tensor
    (``single``) or as foreach passes."""
    if variant == "single":
        return [(pa / ((wi - m).square() + XI)).clamp_(min=0.0) for pa, wi, m in zip(path, w, mu)]
    d = torch._foreach_sub(w, mu)
    torch._foreach_mul_(d, d)
    torch._foreach_add_(d, XI)
    om = torch._foreach_div(path, d)
    torch._foreach_clamp_min_(om, 0.0)
    return om


def segment(dets: list[Tensor], at_step: bool = True) -> Tensor | float:
    """v7: the length in steps of the segment a shift closes now, from the group's detector
    before this step advances it (:func:`swgl.rules.consolidation.freshest`): ``t + 1 -
    t_last`` at a step's shift (``at_step``), ``t - t_last`` at a boundary the user names
    between steps; at least :data:`MIN_SEGMENT`. A float on the CPU (read on the host, no
    sync there), else a 0-d tensor (no host read)."""
    later = 1.0 if at_step else 0.0
    if dets[0].device.type == "cpu":
        t, _, _, t_last = v5.freshest_on_host(dets)
        return max(t + later - t_last, MIN_SEGMENT)
    det = v5.freshest(dets)
    return (det[0] + later - det[3]).clamp(min=MIN_SEGMENT)


def _consolidate(params, state, shift: Tensor, variant: str, ctx: Context, plan=None,
                 per_step: bool = False, length: Tensor | float | None = None) -> None:
    """On a shift: ``F += Om / mean(Om)`` (v7, ``per_step``: ``F += Om / mean(Om) / T``,
    ``T`` the segment's ``length``, by default :func:`segment` of the detector as it stands),
    ``path = 0``, ``mu = w`` (skipped on the host on the CPU; on CUDA masked by the 0-d
    ``shift``, or, in the ``fused`` variant, kernels that exit at once without it).
    ``variant`` ``single`` works per tensor, ``foreach`` as foreach passes, ``fused`` as
    Triton kernels where it can (CUDA, or Triton's interpreter:
    :mod:`swgl.kernels.triton_synaptic`; foreach for the tensors they cannot take). The mean
    is the whole group's: shards complete it with ``ctx.reduce_sum`` and ``ctx.numels``.
    ``plan``: :func:`_state_tables`' result when the caller has it."""
    if shift.device.type == "cpu" and not bool(shift):
        return
    if per_step and length is None:
        length = segment(state["detector"])
    numel = sum(p.numel() for p in params) if ctx.numels is None else sum(ctx.numels)
    sums: list[Tensor] = []
    tables: list = []
    if v5._on_kernels(params, variant):
        from swgl.kernels import triton_synaptic as ts  # imports Triton

        tables, rest = plan or _state_tables(params, state)
        sums = [ts.importance_sum(lau, shift) for lau in tables]
        params, state = v5._subset(state, params, rest)
        variant = "foreach"
    F, mu, path = state["consolidated"], state["anchor"], state["path"]
    w = [p.detach().float() for p in params]
    om = _importance(w, mu, path, variant) if params else []
    sums += [o.sum() for o in om]
    # one local total, then summed over the shards (its shape is the same on every rank)
    local = torch.stack([x.to(sums[0].device) for x in sums]).sum()
    total = ctx.reduce_sum(local.reshape(1)).sum()
    # where nothing was learned (every path <= 0) the mean is 0 and F gains nothing
    gain = shift.float() / (total / numel).clamp(min=1e-30)
    if per_step:
        gain = gain / (length.to(gain.device) if isinstance(length, Tensor) else length)
    for lau in tables:
        ts.consolidate(lau, shift, gain)
    if not params:
        return
    keep = 1.0 - shift.float()
    if variant == "single":
        for f, o, pa, m, wi in zip(F, om, path, mu, w):
            f.add_(o * gain)
            pa.mul_(keep)
            m.lerp_(wi, shift.float())
        return
    torch._foreach_add_(F, torch._foreach_mul(om, gain.to(F[0].device)))
    torch._foreach_mul_(path, keep)
    step = torch._foreach_sub(w, mu)      # mu += shift (w - mu)
    torch._foreach_mul_(step, shift.float())
    torch._foreach_add_(mu, step)


def _path_term(p: Tensor, b: Tensor, g: Tensor, scale) -> Tensor:
    """One tensor's step of the path: ``clamp(g (w - w_before) scale, -R_MAX, R_MAX)`` in fp32
    (``scale``: 1 / the loss scale)."""
    return (g.float() * (p.float() - b.float()) * scale).clamp(-R_MAX, R_MAX)


def _path_one(path: Tensor, p: Tensor, b: Tensor, g: Tensor, scale) -> None:
    """``path -= _path_term(...)`` in place, for one tensor."""
    path.sub_(_path_term(p, b, g, scale))


def _pull_and_path_one(p: Tensor, f: Tensor, mu: Tensor, path: Tensor, b: Tensor, g: Tensor,
                       strength, scale) -> None:
    """v5's pull, then the path from the pulled weights as ``p`` stores them, for one tensor."""
    v5._pull_one(p, f, mu, strength)
    _path_one(path, p, b, g, scale)


def _add_path(params, snapshots, grads, path, variant: str, ctx: Context) -> None:
    """``path -= g (w - w_before)``, ``g`` without the loss scale (``ctx.grad_scale``); each
    step's term capped at ``R_MAX`` in size, so that a huge but finite grad cannot overflow the
    sums. Where the skip flag ``ctx.found`` is set the path is left as it was (its grads are
    not finite): skipped on the host on the CPU, masked on CUDA."""
    ok = ctx.ok(path[0].device)
    if ok is not None and ok.device.type == "cpu":
        if not bool(ok):
            return
        ok = None
    scale = 1.0 / ctx.grad_scale
    if variant == "single":
        for pa, p, b, g in zip(path, params, snapshots, grads):
            _commit(pa, pa - _path_term(p, b, g, scale), ok)
        return
    d = torch._foreach_sub(fp32(params), fp32(snapshots))
    torch._foreach_mul_(d, fp32(grads))
    if scale != 1.0:   # x * 1.0 is x: a pass saved when the grads carry no loss scale
        torch._foreach_mul_(d, scale)
    torch._foreach_clamp_min_(d, -R_MAX)
    torch._foreach_clamp_max_(d, R_MAX)
    if ok is None:
        torch._foreach_sub_(path, d)
        return
    for out, new in zip(path, torch._foreach_sub(path, d)):
        _commit(out, new, ok)


def _pull_strength(det: Tensor, hp: Hyper, ok: Tensor | None) -> Tensor:
    """v5's pull strength as a device scalar (:func:`swgl.rules.consolidation._pull` on
    CUDA): ``consolidation``, gated by the group having consolidated (``t_last > 0``) and by
    ``ok``, faded after ``consolidation_horizon``; 0 for no pull."""
    active = det[3] > 0 if ok is None else (det[3] > 0) & ok
    strength = hp.consolidation * active.float()
    if hp.consolidation_horizon > 0.0:
        strength = strength * (hp.consolidation_horizon / (det[0] - det[3] + 1.0)).clamp(max=1.0)
    return strength


def _pull_and_path_kernels(params, snapshots, grads, state, hp: Hyper,
                           ctx: Context) -> list[int]:
    """The pull and the path as one Triton pass per launch group
    (:func:`swgl.kernels.triton_synaptic.pull_and_path`); returns the indices left to
    foreach."""
    from swgl.kernels import triton_synaptic as ts  # imports Triton

    det = state["detector"][0]
    tables, rest = _after_tables(params, grads, snapshots, state)
    strength = _pull_strength(det, hp, ctx.ok(det.device))
    for lau in tables:
        ts.pull_and_path(lau, strength, ctx.found, ctx.grad_scale)
    return rest


def _pull_and_path_compiled(params, snapshots, grads, state, hp: Hyper,
                            ctx: Context) -> list[int]:
    """The CPU: the pull and the path as one compiled function per large tensor
    (:func:`_pull_and_path_one`; :func:`_path_one` while nothing pulls; the flags read on the
    host, which costs no sync there); returns the indices left to foreach."""
    from swgl.kernels import compiled as cc

    if ctx.found is not None and bool(ctx.found.reshape(()) != 0):
        return []
    det, F, mu, path = state["detector"][0], state["consolidated"], state["anchor"], state["path"]
    big, rest = cc.split(params, snapshots, grads, F, mu, path)
    strength = _pull_strength(det, hp, None)
    scale = cc.scalar(1.0 / ctx.grad_scale)
    if float(strength) != 0.0:
        step = cc.compiled(_pull_and_path_one)
        for i in big:
            step(*(cc.flat(xs[i]) for xs in (params, F, mu, path, snapshots, grads)),
                 cc.scalar(strength), scale)
    else:
        step = cc.compiled(_path_one)
        for i in big:
            step(*(cc.flat(xs[i]) for xs in (path, params, snapshots, grads)), scale)
    return rest


def _pull_and_path(params, snapshots, grads, state, hp: Hyper, variant: str,
                   ctx: Context) -> None:
    """After the base step: v5's pull, then the path (:func:`_add_path`), both left out where
    ``ctx.found`` is set. ``fused``: one pass for both where it can (a Triton kernel on CUDA
    or under Triton's interpreter, a compiled function per large tensor on the CPU), foreach
    for the rest."""
    if variant == "fused":
        fused = (_pull_and_path_kernels if v5._on_kernels(params, variant)
                 else _pull_and_path_compiled)
        rest = fused(params, snapshots, grads, state, hp, ctx)
        if not rest:
            return
        params, state = v5._subset(state, params, rest)
        snapshots, grads = [snapshots[i] for i in rest], [grads[i] for i in rest]
        variant = "foreach"
    det = state["detector"][0]
    v5._pull(params, state, det, hp.consolidation, variant, ok=ctx.ok(det.device),
             horizon=hp.consolidation_horizon)
    _add_path(params, snapshots, grads, state["path"], variant, ctx)


def _consolidate_si(per_step: bool):
    """v6's (v7's: ``per_step``) consolidation in v5's ``before`` phase
    (:func:`swgl.rules.consolidation._before`), which calls it before the detector's new
    values are stored."""
    def consolidate(params, state, shift: Tensor, aux, hp: Hyper, ctx: Context,
                    variant: str) -> None:
        _consolidate(params, state, shift, variant, ctx, per_step=per_step)
    return consolidate


def _boundary(per_step: bool):
    """A task boundary the user names: v6's (v7's: ``per_step``) consolidation now, as at a
    detected shift (``F += Om / mean(Om)`` [``/ T``], ``path = 0``, ``mu = w``), and the
    detector told (:func:`swgl.rules.consolidation.mark_shift`)."""
    def boundary(params, state, hp: Hyper, ctx: Context) -> None:
        length = segment(state["detector"], at_step=False) if per_step else None
        _consolidate(params, state, v5.mark_shift(state["detector"]), "foreach", ctx,
                     per_step=per_step, length=length)
    return boundary


def _before(v4_before, variant: str, per_step: bool = False):
    """v5's ``before`` with v6's (v7's: ``per_step``) consolidation; ``aux`` also carries the
    step's loss scale and skip flag, which the after phase's path needs (the caller's
    ``after`` context has neither)."""
    before_v5 = v5._before(v4_before, variant, _consolidate_si(per_step))

    def before(params, grads, state, steps, hp: Hyper, ctx: Context):
        aux = before_v5(params, grads, state, steps, hp, ctx)
        step = Context(grad_scale=ctx.grad_scale, found=ctx.found)
        return [(k, g, step) for k, g in aux]
    return before


def _after(v4_after, variant: str):
    def after(params, snapshots, state, steps, aux, hp: Hyper, ctx: Context) -> None:
        if hp.lambda_reg > 0.0:   # v4 only reads the snapshots: they still hold the start
            v4_after(params, snapshots, state, steps, [(k, g) for k, g, _ in aux], hp, ctx)
        _pull_and_path(params, snapshots, [g for _, g, _ in aux], state, hp, variant, aux[0][2])
    return after


def _snapshots(params) -> list[Tensor]:
    """Copies of ``params`` (their dtype) in buffers held with the launch tables
    (:func:`swgl.kernels.cached_plan`): at fixed addresses, as a CUDA graph replays them."""
    from swgl import kernels

    kept = kernels.cached_plan("v6.snapshots", [params], [], lambda: [
        torch.empty_like(p, memory_format=torch.contiguous_format) for p in params])
    torch._foreach_copy_(kept, params)
    return kept


def around_fused_step(params, grads, state, hp: Hyper, found: Tensor,
                      v4_step: Callable[[], Tensor], n: Tensor, per_step: bool = False) -> None:
    """v6 around a fused v4 step that also steps the optimizer (swgl.optim's Triton path),
    with no host sync: ``v4_step()`` runs it; ``found`` is the step's skip flag, already set;
    ``n`` is the detector's signal, summed by v4's first pass; ``per_step``: v7's. The same
    math as the phases, in this order: the detector (its kernel, on a copy: the state keeps
    the old values, which v7's consolidation reads, until they are stored after it); on a
    shift the consolidation (before the step, as the ``before`` phase takes it: it reads the
    weights, the anchor and the path); a copy of the params; the step; the pull and the path
    (one kernel: :func:`_pull_and_path`).

    Memory: the copy of the params the path needs (``w_before``) is one buffer in the params'
    dtype (4 bytes per element for fp32 params, 2 for bf16), allocated once and held with the
    launch tables (:func:`_snapshots`). Folding the path into v4's apply pass, which holds
    ``w_before`` and ``g`` in registers, would save the copy and the path's pass."""
    det = state["detector"]
    new, shift = v5._advance(n, det, found, kernel=True)
    _consolidate(params, state, shift, "fused", Context(), per_step=per_step)
    torch._foreach_copy_(det, [new] * len(det))
    start = _snapshots(params)
    v4_step()
    _pull_and_path(params, start, grads, state, hp, "fused", Context(found=found))


V6 = Rule(
    name="v6",
    before=Variants(_before(V4.before.single, "single"), _before(V4.before.foreach, "foreach"),
                    _before(V4.before.fused, "fused")),
    after=Variants(_after(V4.after.single, "single"), _after(V4.after.foreach, "foreach"),
                   _after(V4.after.fused, "fused")),
    options=frozenset({"alpha", "lambda_reg", "eps", "max_boost", "mode", "consolidation",
                       "consolidation_horizon"}),
    state=(("stability", 0.0), ("consolidated", 0.0), ("anchor", "param"), ("path", 0.0),
           ("detector", v5.DETECTOR)),
    signed_state=frozenset({"path"}),   # SI's path integral: negative where moves cost loss
    snapshot=True,
    modes=("update",),
    device_guard=True,
    factor=V4.factor,
    kernel="v4",
    cpu_fused=True,
    fused_checks=True,
    defaults=(("alpha", 0.999), ("lambda_reg", 0.0), ("consolidation", STRENGTH),
              ("consolidation_horizon", 0.0)),
    around_fused_step=around_fused_step,
    host_guard=V4.host_guard,   # its foreach before is v4's
    graphable=True,
    boundary=_boundary(False),
)

V7 = dataclasses.replace(
    V6,
    name="v7",
    before=Variants(*(_before(getattr(V4.before, v), v, per_step=True)
                      for v in ("single", "foreach", "fused"))),
    defaults=(("alpha", 0.999), ("lambda_reg", 0.0), ("consolidation", PER_STEP_STRENGTH),
              ("consolidation_horizon", 0.0)),
    around_fused_step=functools.partial(around_fused_step, per_step=True),
    boundary=_boundary(True),
)
