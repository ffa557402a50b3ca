"""Rule ``v6``'s Triton kernels (swgl.kernels.triton_synaptic) against its reference functions
(swgl.rules.synaptic): the fused phases equal the single and foreach ones across a shift, with
odd sizes, fp32 and bf16 params, a loss scale and a skipped non-finite step; the kernels do
nothing where their flags say so. On a machine without CUDA they run under Triton's
interpreter (TRITON_INTERPRET=1 with Triton installed) and skip otherwise. The reference's own
handling of a skipped step and of a loss scale is tested here too (no Triton needed)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from swgl import SWGL, kernels
from swgl.kernels import compiled
from swgl.rules import RULES, Context, Hyper
from swgl.rules import synaptic as v6

DEV = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernels = pytest.mark.skipif(
    not kernels.runs_on(torch.device(DEV)),
    reason="needs Triton on CUDA, or TRITON_INTERPRET=1 with Triton installed")
HP = Hyper(alpha=0.9, lambda_reg=0.0, eps=1e-8, max_boost=10.0, mode="update",
           consolidation=0.5)
#: a partial tile, a few elements, tiles and a tail; the last is a non-contiguous view, which
#: the kernels leave to foreach in the same call
SIZES = (1, 7, 1000, 4097)
VARIANTS = ("single", "foreach", "fused")
#: per step: the grads' size (x10 fires the detector, primed below) and whether one is NaN
STEPS = [(1.0, False), (1.0, False), (10.0, False), (1.0, False), (1.0, True), (1.0, False),
         (1.0, False)]
SHIFT_STEP = 2


def _inputs(dtype, view=True, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(n, generator=gen).to(DEV, dtype) for n in SIZES]
    if view:
        params.append(torch.randn(5, 3, generator=gen).to(DEV, dtype).t())
    n0 = float(sum(p.numel() for p in params))
    state = {"stability": [torch.zeros(p.shape, device=DEV) for p in params],
             "consolidated": [torch.rand(p.shape, generator=gen).to(DEV) for p in params],
             "anchor": [p.float().clone() for p in params],
             "path": [torch.zeros(p.shape, device=DEV) for p in params],
             # 100 steps of a steady signal: a jump now is a shift
             "detector": [torch.tensor([100.0, n0, n0, 0.0], device=DEV) for _ in params]}
    return params, state


def _grads(params, t, size, bad, scale):
    gen = torch.Generator().manual_seed(100 + t)
    grads = [(size * scale * torch.randn(p.shape, generator=gen)).to(DEV, p.dtype)
             for p in params]
    if bad:
        grads[2][5] = float("nan")
    return grads


def _run(variant, dtype, scale=1.0, hp=HP, record=None, view=True, rule="v6"):
    """The phases of ``variant`` of ``rule`` (v6, or v7: the same kernels, another gain)
    around a plain SGD step (skipped, as a GradScaler does, on a non-finite step), over
    :data:`STEPS`; the grads carry the loss scale ``scale``."""
    params, state = _inputs(dtype, view)
    rule = RULES[rule]
    before, after = getattr(rule.before, variant), getattr(rule.after, variant)
    steps = [torch.zeros((), device=DEV) for _ in params]
    for t, (size, bad) in enumerate(STEPS):
        grads = _grads(params, t, size, bad, scale)
        found = torch.tensor([1.0 if bad else 0.0], device=DEV)
        aux = before(params, grads, state, steps, hp, Context(grad_scale=scale, found=found))
        snapshots = [p.clone() for p in params]
        if not bad:
            for p, g in zip(params, grads):
                p.copy_(p.float() - 0.05 * g.float() / scale)
        after(params, snapshots, state, steps, aux, hp, Context())
        if record is not None:
            record.append(copy.deepcopy(state["path"]))
    return params, state


def _close(a, b, dtype, name="param"):
    if dtype == torch.float32:
        tol = dict(rtol=1e-5, atol=1e-6)
    elif name == "param":
        # a bf16 ulp: where the variants' fp32 pulled weights (their sums of the mean, a GPU's
        # FMA) straddle a rounding boundary
        tol = dict(rtol=2**-7, atol=1e-2)
    else:   # the path and the anchor read such a weight: g times its ulp, for that element
        tol = dict(rtol=2**-7, atol=0.05)
    torch.testing.assert_close(a.float(), b.float(), **tol)


def _truncate_pull_one(p, f, mu, strength):
    """v5's ``_pull_one``, with a bf16 param stored as Triton's interpreter stores it."""
    k = f * strength
    new = (p.float() + k * mu) / (1.0 + k)
    if p.dtype == torch.bfloat16:   # round toward 0: drop the low 16 bits of the fp32
        new = (new.contiguous().view(torch.int32) & -65536).view(torch.float32)
    p.copy_(new)


@needs_kernels
@pytest.mark.parametrize("rule", ["v6", "v7"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_equals_foreach_equals_single_across_a_shift(dtype, rule, monkeypatch):
    """bf16: Triton's interpreter rounds fp32 to bf16 toward 0 (a GPU to nearest), and the
    path reads the pulled weights as stored, so on the CPU the fused run is compared with a
    reference whose pull rounds the same way (and, for bf16, no foreach tensor in the call)."""
    view = dtype == torch.float32
    runs = {variant: _run(variant, dtype, view=view, rule=rule) for variant in VARIANTS}
    refs = {"foreach": runs["single"], "fused": runs["single"]}
    if dtype == torch.bfloat16 and DEV == "cpu":
        from swgl.rules import consolidation as v5

        monkeypatch.setattr(v5, "_pull_one", _truncate_pull_one)
        refs["fused"] = _run("single", dtype, view=view, rule=rule)
    params, state = runs["single"]
    det = state["detector"][0]
    assert float(det[3]) == 100 + SHIFT_STEP + 1           # the shift fired at its step
    assert float(det[0]) == 100 + len(STEPS) - 1          # the NaN step was not counted
    # the pull moved the weights: not the plain SGD steps from the anchor
    assert any(not torch.equal(a, m.to(a.dtype)) for a, m in zip(params, state["anchor"]))
    for variant, (params, state) in refs.items():
        got_params, got_state = runs[variant]
        for p, q in zip(params, got_params):
            _close(q, p, dtype)
        for name in ("consolidated", "anchor", "path", "detector"):
            for a, b in zip(state[name], got_state[name]):
                _close(b, a, dtype, name)


@pytest.mark.parametrize("variant", ["single", "foreach"])
def test_v7s_shift_adds_v6s_term_over_its_segment(variant):
    """v7's consolidation is v6's, its term divided by the steps since the last shift (no
    Triton needed: the reference variants)."""
    _, start = _inputs(torch.float32)
    _, v6_state = _run(variant, torch.float32, rule="v6")
    _, v7_state = _run(variant, torch.float32, rule="v7")
    segment = 100 + SHIFT_STEP + 1      # t + 1 - t_last at the shift step, t_last = 0
    for f0, f6, f7 in zip(start["consolidated"], v6_state["consolidated"],
                          v7_state["consolidated"]):
        torch.testing.assert_close((f7 - f0) * segment, f6 - f0, rtol=1e-4, atol=1e-5)
        assert (f6 - f0).abs().sum() > 0


@needs_kernels
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_loss_scale_is_transparent(variant):
    """Grads that carry a loss scale S (``grad_scale=S``) give the unscaled run's state."""
    plain = _run(variant, torch.float32)
    scaled = _run(variant, torch.float32, scale=1024.0)
    for name in ("consolidated", "anchor", "path"):
        for a, b in zip(plain[1][name], scaled[1][name]):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert any(p.abs().sum() > 0 for p in plain[1]["path"])


@needs_kernels
@pytest.mark.parametrize("variant", VARIANTS)
def test_a_skipped_step_leaves_the_path_and_the_weights(variant):
    paths: list = []
    _run(variant, torch.float32, record=paths)
    bad = next(t for t, (_, flag) in enumerate(STEPS) if flag)
    for a, b in zip(paths[bad - 1], paths[bad]):
        assert torch.equal(a, b)
    assert all(torch.isfinite(x).all() for x in paths[-1])
    assert any(not torch.equal(a, b) for a, b in zip(paths[bad], paths[bad + 1]))


@pytest.mark.parametrize("variant", ["single", "foreach"])
def test_the_reference_skips_a_flagged_step_and_unscales_the_path(variant):
    """(No Triton.) The after phase takes the skip flag and the loss scale from ``before``
    (its own context has neither): a flagged step leaves the path and the weights as they
    were; a loss scale is divided out of ``g``."""
    w = [torch.tensor([1.0, -2.0, 0.5])]
    state = {"stability": [torch.zeros(3)], "consolidated": [torch.ones(3)],
             "anchor": [torch.zeros(3)], "path": [torch.zeros(3)],
             "detector": [torch.tensor([100.0, 1.0, 1.0, 90.0])]}   # consolidated: it pulls
    rule = RULES["v6"]
    before, after = getattr(rule.before, variant), getattr(rule.after, variant)
    g = torch.tensor([0.3, -1.0, float("nan")])
    aux = before(w, [g], state, [torch.ones(())], HP, Context(found=torch.ones(1)))
    kept = copy.deepcopy((w, state))
    after(w, [w[0].clone()], state, [torch.ones(())], aux, HP, Context())
    assert torch.equal(w[0], kept[0][0]) and torch.equal(state["path"][0], kept[1]["path"][0])
    g = torch.tensor([0.3, -1.0, 2.0])
    aux = before(w, [64.0 * g], state, [torch.ones(())], HP, Context(grad_scale=64.0))
    start = w[0].clone()
    w[0].sub_(0.1 * g)
    after(w, [start], state, [torch.ones(())], aux, HP, Context())
    torch.testing.assert_close(state["path"][0], -g * (w[0] - start))


@pytest.mark.parametrize("fused", [False, None])
def test_two_objects_keep_the_path_finite_across_a_skipped_base_step(fused):
    """SWGL and its base optimizer as two objects, the base skipping a non-finite step (as a
    GradScaler does): the after phase of that step (run at the next SWGL.step) changes
    nothing."""
    gen = torch.Generator().manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3, generator=gen))
    base = torch.optim.SGD([w], lr=1e-2)
    opt = SWGL([w], rule="v6", fused=fused)
    path = None
    for t in range(6):
        grad = torch.randn(4, 3, generator=gen)
        if t == 2:
            grad[0, 0] = float("nan")
        w.grad = grad
        opt.step()
        if t == 3:
            assert torch.equal(opt.state[w]["path"], path)   # the skipped step's after ran
        if torch.isfinite(grad).all():
            base.step()
        path = opt.state[w]["path"].clone()
        assert torch.isfinite(path).all(), t


@needs_kernels
@pytest.mark.parametrize("programs", [None, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kernels_follow_their_flags(dtype, programs, monkeypatch):
    """The consolidation's kernels do nothing without a shift (the sum is 0); the after
    kernel does nothing on a skipped step and, without strength, moves the path only.
    ``programs``: the consolidation's strided grid held to 2 programs, each striding over
    several tiles (else a program per tile at these sizes)."""
    from swgl.kernels import triton_swgl
    from swgl.kernels import triton_synaptic as ts

    if programs is not None:
        monkeypatch.setattr(triton_swgl, "_programs", lambda device: programs)

    params, state = _inputs(dtype)
    params = params[:-1]                                   # the kernels' tensors only
    state = {k: v[:-1] for k, v in state.items()}
    for q in state["path"]:
        q.copy_(torch.randn(q.shape, device=DEV))
    grads = _grads(params, 0, 1.0, False, 1.0)
    snapshots = [(p.float() + 0.01).to(dtype) for p in params]
    tables, rest = v6._state_tables(params, state)
    after, after_rest = v6._after_tables(params, grads, snapshots, state)
    assert tables and after and not rest and not after_rest
    every = params + sum((state[k] for k in ("consolidated", "anchor", "path")), [])
    kept = [t.clone() for t in every]
    off, on = torch.zeros((), device=DEV), torch.ones((), device=DEV)
    for lau in tables:
        assert float(ts.importance_sum(lau, off)) == 0.0
        ts.consolidate(lau, off, on)
    for lau in after:
        ts.pull_and_path(lau, 0.5 * on, on, 1.0)           # found set: skipped
    assert all(torch.equal(a, b) for a, b in zip(every, kept))
    # a shift: the sum and the update are the reference's
    w = [p.float() for p in params]
    om = v6._importance(w, state["anchor"], state["path"], "single")
    total = sum(float(ts.importance_sum(lau, on)) for lau in tables)
    assert total == pytest.approx(sum(float(o.sum()) for o in om), rel=1e-5)
    for lau in tables:
        ts.consolidate(lau, on, 2.0 * on)
    for f, f0, o, m, q, wi in zip(state["consolidated"], kept[len(params):], om,
                                  state["anchor"], state["path"], w):
        torch.testing.assert_close(f, f0 + 2.0 * o)
        assert torch.equal(m, wi) and not q.any()
    # no strength: the weights stay, the path moves as the reference's
    ref = [q.clone() for q in state["path"]]
    v6._add_path(params, snapshots, grads, ref, "single", Context())
    for lau in after:
        ts.pull_and_path(lau, off, off, 1.0)
    assert all(torch.equal(p, k) for p, k in zip(params, kept))
    for a, b in zip(state["path"], ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.skipif(not (compiled.available() or kernels.runs_on(torch.device("cpu"))),
                    reason="needs torch.compile and a C++ compiler (or Triton's interpreter)")
@pytest.mark.parametrize("flagged", [False, True])
@pytest.mark.parametrize("active", [False, True])
def test_the_fused_after_matches_the_reference_on_large_tensors(active, flagged):
    """On the CPU the pull and the path are one compiled function per large tensor (under
    TRITON_INTERPRET=1, the Triton kernel), foreach for the small ones: against the single
    variant, before the first shift (no pull) and after it, with a loss scale, and on a
    flagged step (nothing moves)."""
    gen = torch.Generator().manual_seed(0)
    shapes = [(300, 300), (7,)]
    params = [torch.randn(s, generator=gen) for s in shapes]
    snapshots = [p + 0.01 * torch.randn(p.shape, generator=gen) for p in params]
    grads = [8.0 * torch.randn(p.shape, generator=gen) for p in params]
    last = 60.0 if active else 0.0
    state = {"consolidated": [torch.rand(s, generator=gen) * 5 for s in shapes],
             "anchor": [torch.randn(s, generator=gen) for s in shapes],
             "path": [torch.randn(s, generator=gen) for s in shapes],
             "detector": [torch.tensor([64.0, 1.0, 1.0, last])] * 2}
    hp = dataclasses.replace(HP, consolidation_horizon=2.0)      # faded: 2 / 5
    ctx = Context(grad_scale=8.0, found=torch.tensor([1.0 if flagged else 0.0]))
    out = {}
    for variant in ("single", "fused"):
        ps, st = copy.deepcopy((params, state))
        v6._pull_and_path(ps, snapshots, grads, st, hp, variant, ctx)
        out[variant] = ps, st["path"]
    for a, b in zip(out["single"][0] + out["single"][1], out["fused"][0] + out["fused"][1]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    moved = [not torch.equal(a, b) for a, b in zip(out["fused"][0] + out["fused"][1],
                                                   params + state["path"])]
    assert moved == [active and not flagged] * 2 + [not flagged] * 2
