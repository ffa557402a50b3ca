r"""``v6``: ``v5``'s detector and pull, with the importance of synaptic intelligence (SI,
Zenke et al. 2017) in place of the Fisher's, normalised by its mean over the group, and no
damping by default.

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
docs/results.md, "Earn its place"). ``lambda_reg`` > 0 turns v4's damping back on; ``alpha``,
``eps`` and ``max_boost`` act through that damping only (and ``alpha`` on the EMA that
``SWGL.stats`` reports).

Phases: ``before`` is v5's with this consolidation; ``after`` runs v4's ``after`` (only when
``lambda_reg`` > 0, else the base step stands), the pull (v5's), then the path. On the CPU
the consolidation is skipped on the host when no shift was found; on CUDA it is masked by the
shift flag, with no host sync. The rule has no kernels of its own yet: ``fused`` takes v4's
fused EMA pass and v5's detector and pull (Triton on CUDA, compiled on the CPU), and runs the
consolidation and the path as foreach passes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from swgl.rules import consolidation as v5
from swgl.rules.base import Context, Hyper, Rule, Variants
from swgl.rules.importance import R_MAX, V4

__all__ = ["V6", "STRENGTH", "XI"]

#: the default of ``consolidation`` under v6: the pull per unit of normalised importance
STRENGTH = 3e-4
#: SI's damping of its importance (``(w - mu)^2 + XI``), in squared weight units: SI's own
XI = 0.1


def _consolidate(params, state, shift: Tensor, variant: str, ctx: Context) -> None:
    """On a shift: ``F += Om / mean(Om)``, ``path = 0``, ``mu = w`` (masked by the 0-d
    ``shift`` on CUDA; skipped on the host on the CPU). ``variant`` ``single`` works per
    tensor, the others as foreach passes. The mean is the whole group's: shards complete it
    with ``ctx.reduce_sum`` and ``ctx.numels``."""
    if shift.device.type == "cpu" and not bool(shift):
        return
    F, mu, path = state["consolidated"], state["anchor"], state["path"]
    w = [p.detach().float() for p in params]
    if variant == "single":
        om = [(pa / ((wi - m).square() + XI)).clamp_(min=0.0) for pa, wi, m in zip(path, w, mu)]
    else:
        d = torch._foreach_sub(w, mu)
        torch._foreach_mul_(d, d)
        torch._foreach_add_(d, XI)
        om = torch._foreach_div(path, d)
        torch._foreach_clamp_min_(om, 0.0)
    total = ctx.reduce_sum(torch.stack([o.sum() for o in om])).sum()
    numel = sum(o.numel() for o in om) if ctx.numels is None else sum(ctx.numels)
    # where nothing was learned (every path <= 0) the mean is 0 and F gains nothing
    gain = shift.float() / (total / numel).clamp(min=1e-30)
    keep = 1.0 - shift.float()
    if variant == "single":
        for f, o, pa, m, wi in zip(F, om, path, mu, w):
            f.add_(o * gain)
            pa.mul_(keep)
            m.lerp_(wi, shift.float())
        return
    torch._foreach_add_(F, torch._foreach_mul(om, gain))
    torch._foreach_mul_(path, keep)
    step = torch._foreach_sub(w, mu)      # mu += shift (w - mu)
    torch._foreach_mul_(step, shift.float())
    torch._foreach_add_(mu, step)


def _add_path(params, snapshots, grads, path, variant: str, ctx: Context) -> None:
    """``path -= g (w - w_before)``, ``g`` without the loss scale; each step's term capped at
    ``R_MAX`` in size, so that a huge but finite grad cannot overflow the sums."""
    scale = 1.0 / ctx.grad_scale
    if variant == "single":
        for pa, p, b, g in zip(path, params, snapshots, grads):
            d = (g.float() * (p.float() - b.float())).mul_(scale)
            pa.sub_(d.clamp_(-R_MAX, R_MAX))
        return
    d = torch._foreach_sub([p.float() for p in params], [b.float() for b in snapshots])
    torch._foreach_mul_(d, [g.float() for g in grads])
    torch._foreach_mul_(d, scale)
    torch._foreach_clamp_min_(d, -R_MAX)
    torch._foreach_clamp_max_(d, R_MAX)
    torch._foreach_sub_(path, d)


def _consolidate_si(params, state, shift: Tensor, aux, hp: Hyper, ctx: Context,
                    variant: str) -> None:
    """v6's consolidation in v5's ``before`` phase (:func:`swgl.rules.consolidation._before`)."""
    _consolidate(params, state, shift, variant, ctx)


def _after(v4_after, variant: str):
    def after(params, snapshots, state, steps, aux, hp: Hyper, ctx: Context) -> None:
        grads = [g for _, g in aux]
        if hp.lambda_reg > 0.0:
            # v4's after writes the new weights into fp32 snapshots: keep the step's start
            start = [b.float().clone() for b in snapshots]
            v4_after(params, snapshots, state, steps, aux, hp, ctx)
            snapshots = start
        v5._pull(params, state, state["detector"][0], hp.consolidation, variant,
                 horizon=hp.consolidation_horizon)
        _add_path(params, snapshots, grads, state["path"], variant, ctx)
    return after


V6 = Rule(
    name="v6",
    before=Variants(*(v5._before(v4_before, variant, _consolidate_si) for v4_before, variant in
                      ((V4.before.single, "single"), (V4.before.foreach, "foreach"),
                       (V4.before.fused, "fused")))),
    after=Variants(_after(V4.after.single, "single"), _after(V4.after.foreach, "foreach"),
                   _after(V4.after.fused, "fused")),
    options=frozenset({"alpha", "lambda_reg", "eps", "max_boost", "mode", "consolidation",
                       "consolidation_horizon"}),
    state=(("stability", 0.0), ("consolidated", 0.0), ("anchor", "param"), ("path", 0.0),
           ("detector", v5.DETECTOR)),
    snapshot=True,
    modes=("update",),
    device_guard=True,
    factor=V4.factor,
    cpu_fused=True,
    defaults=(("alpha", 0.999), ("lambda_reg", 0.0), ("consolidation", STRENGTH),
              ("consolidation_horizon", 0.0)),
)
