"""Each rule's variants against each other: single == foreach == fused (Triton), in both
phases, for fp32 and bf16 params and odd sizes; the fused path's fallbacks; the device-side
skip; the cache-blocked CPU path.

Kernel tests need CUDA and Triton and skip cleanly without them. With ``TRITON_INTERPRET=1``
and Triton installed, they run on the CPU through Triton's interpreter.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from rulecall import before
from swgl import SWGL, kernels
from swgl.functional import swgl as swgl_fn
from swgl.functional import swgl_after
from swgl.kernels import compiled
from swgl.rules import RULES, Context, Hyper

#: the rules these generic checks call with a stability list alone: v5 keeps more state (its
#: variants are checked against each other in tests/test_rule_v5.py)
RULE_NAMES = tuple(name for name, r in RULES.items() if len(r.state) == 1)
GUARDED = tuple(name for name in RULE_NAMES if RULES[name].device_guard)
KDEV = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernels = pytest.mark.skipif(
    not (kernels.triton_available() and kernels.runs_on(torch.device(KDEV))),
    reason="needs CUDA and Triton (or TRITON_INTERPRET=1 with Triton installed)",
)
needs_cuda_kernels = pytest.mark.skipif(
    not (torch.cuda.is_available() and kernels.triton_available()),
    reason="needs CUDA and Triton",
)
SHAPES = [(1,), (3,), (7, 13), (4096,), (4097,), (3, 5, 67), (130, 31)]
HP = Hyper(alpha=0.9, lambda_reg=0.05, eps=1e-8, max_boost=10.0)


def _inputs(rule, shapes, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).to(device=device, dtype=dtype) for s in shapes]
    grads = [(torch.randn(s, generator=gen) * 0.1).to(device=device, dtype=dtype) for s in shapes]
    base = 0.5 if RULES[rule].init_value else 0.0
    stabs = [(torch.rand(s, generator=gen) + base).to(device) for s in shapes]
    steps = [torch.tensor(float(3 + i % 4), device=device) for i in range(len(shapes))]
    return params, grads, stabs, steps


def _clone(xs):
    return [x.clone() for x in xs]


def _rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def _variant(rule, impl):
    """``impl``: a variant's name, or a callable with the rules' (stabilities-list) signature."""
    if callable(impl):
        return lambda p, g, s, st, hp, ctx: impl(p, g, {"stability": s}, st, hp, ctx)
    return lambda p, g, s, st, hp, ctx: before(rule, impl, p, g, s, st, hp, ctx)


GRAD_HP = dataclasses.replace(HP, mode="grad")


def _run(impl, rule, inputs, ctx, hp=GRAD_HP):
    """The before phase; returns (grads, stabilities)."""
    params, grads, stabs, steps = inputs
    g, s = _clone(grads), _clone(stabs)
    _variant(rule, impl)(params, g, s, steps, hp, ctx)
    return g, s


def _both_phases(rule, impl, inputs, hp, ctx):
    """mode="update": before, a base step of -g, then after; returns (params, stabilities)."""
    r = RULES[rule]
    params, grads, stabs, steps = inputs
    p, g, s = _clone(params), _clone(grads), _clone(stabs)
    hp = r.hyper(hp)
    aux = getattr(r.before, impl)(p, g, {"stability": s}, steps, hp, ctx)
    snapshots = _clone(p)
    for w, d in zip(p, g):
        w.sub_(d)
    getattr(r.after, impl)(p, snapshots, {"stability": s}, steps, aux, hp, ctx)
    return p, s


def _run_mode(rule, impl, inputs, hp, ctx):
    if hp.mode == "grad":
        return _run(impl, rule, inputs, ctx, hp)
    return _both_phases(rule, impl, inputs, hp, ctx)


def _check(out, ref, dtype, tol=None):
    if tol is None:
        tol = 1e-5 if dtype == torch.float32 else 2e-2
    for a, b in zip(out[0], ref[0]):
        assert torch.isfinite(a).all()
        assert _rel(a, b) < tol
    for a, b in zip(out[1], ref[1]):
        assert _rel(a, b) < (1e-5 if dtype == torch.float32 else 5e-3)


# -- everywhere -------------------------------------------------------------------------------


def test_every_rule_has_its_variants_with_one_signature():
    for rule in RULES.values():
        for phase in (rule.before, rule.after):
            if phase is not None:
                assert callable(phase.single) and callable(phase.foreach)
        assert rule.modes and set(rule.modes) <= {"grad", "update"}
        assert ("update" in rule.modes) == (rule.after is not None)


def test_import_swgl_does_not_import_triton():
    code = "import sys, swgl, swgl.optim; assert 'triton' not in sys.modules, 'triton imported'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


def test_auto_dispatch_never_fuses_cpu_tensors():
    assert not kernels.can_fuse([torch.randn(4)], HP) or kernels._INTERPRET


def test_unknown_hyper_options_are_not_fused():
    @dataclasses.dataclass(frozen=True)
    class Hyper2(Hyper):
        future_option: str = "off"

    assert kernels.supports(Hyper2(0.9, 0.0, 1e-8, 10.0))
    assert not kernels.supports(Hyper2(0.9, 0.0, 1e-8, 10.0, future_option="on"))
    assert kernels.supports(dataclasses.replace(HP, mode="update"))
    assert not kernels.supports(dataclasses.replace(HP, shock=2.0))


@pytest.mark.parametrize("impl", ["foreach", pytest.param("fused", marks=needs_kernels)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rule", RULE_NAMES)
def test_variant_matches_single_in_every_mode(rule, dtype, impl):
    """single == foreach == fused, both phases, odd sizes, loss-scaled grads."""
    device = KDEV if impl == "fused" else "cpu"
    for mode in RULES[rule].modes:
        hp = dataclasses.replace(HP, mode=mode, signal="utility")
        for seed, scale in ((0, 1.0), (1, 1024.0)):
            inputs = _inputs(rule, SHAPES, dtype, device, seed)
            ctx = Context(grad_scale=scale)
            _check(_run_mode(rule, impl, inputs, hp, ctx),
                   _run_mode(rule, "single", inputs, hp, ctx), dtype)


@pytest.mark.parametrize("impl", ["single", "foreach"])
@pytest.mark.parametrize("rule", GUARDED)
def test_a_found_flag_leaves_state_and_grads_untouched(rule, impl):
    params, grads, stabs, steps = _inputs(rule, SHAPES, torch.float32, "cpu")
    grads[2][0, 0] = float("nan")
    for mode in RULES[rule].modes:
        hp = dataclasses.replace(HP, mode=mode)
        out_g, out_s = _run(impl, rule, (params, grads, stabs, steps),
                            Context(found=torch.ones(1)), hp)
        assert all(torch.equal(a, b) for a, b in zip(out_s, stabs))
        assert all(torch.equal(a.nan_to_num(), b.nan_to_num()) for a, b in zip(out_g, grads))


def test_foreach_log_sums_in_fp32_are_accurate_on_large_tensors():
    """The reference level's fp32 shifted 1-norms against fp64 sums, on 4M heavy-tailed
    elements (8 decades) with exact zeros."""
    from swgl.rules.normalised import _log_sums

    gen = torch.Generator().manual_seed(0)
    s = torch.rand(1 << 22, generator=gen).pow_(8).mul_(1e-3)
    s[:1000] = 0.0
    log_sum, count = _log_sums([s], Context())
    active = s > 0
    exact = s[active].double().log().sum().item() / active.sum().item()
    assert count.item() == active.sum().item()
    assert abs(log_sum.item() / count.item() - exact) < 2e-5  # m within 2e-5 relative


@pytest.mark.parametrize("rule", RULE_NAMES)
def test_fused_variant_falls_back_to_foreach_for_tensors_it_cannot_take(rule):
    # CPU (outside the interpreter) and fp64 tensors go to foreach inside the same call
    inputs = _inputs(rule, [(5,), (3, 4)], torch.float64, "cpu")
    out = _run("fused", rule, inputs, Context(grad_scale=8.0))
    ref = _run("single", rule, inputs, Context(grad_scale=8.0))
    _check(out, ref, torch.float32)


@pytest.mark.skipif(kernels.triton_available(), reason="checks the error without Triton")
def test_fused_true_without_triton_raises():
    p, g, s, st = _inputs("v2", [(3,)], torch.float32, "cpu")
    with pytest.raises(RuntimeError, match="fused=True"):
        swgl_fn(p, g, s, st, rule="v2", alpha=0.9, lambda_reg=0.0, eps=1e-8, max_boost=10.0,
                fused=True)


def test_swgl_checks_fused_option():
    with pytest.raises(TypeError, match="fused"):
        SWGL([torch.nn.Parameter(torch.randn(3))], fused="yes")
    opt = SWGL([torch.nn.Parameter(torch.randn(3))], fused=False)
    assert opt.param_groups[0]["fused"] is False


# -- kernels ----------------------------------------------------------------------------------


@needs_kernels
@pytest.mark.parametrize("rule", GUARDED)
def test_fused_found_flag_leaves_state_and_grads_untouched(rule):
    params, grads, stabs, steps = _inputs(rule, SHAPES, torch.float32, KDEV)
    grads[2][0, 0] = float("inf")
    for mode in RULES[rule].modes:
        hp = dataclasses.replace(HP, mode=mode)
        out_g, out_s = _run("fused", rule, (params, grads, stabs, steps),
                            Context(found=torch.ones(1, device=KDEV)), hp)
        assert all(torch.equal(a, b) for a, b in zip(out_g + out_s, grads + stabs))


@needs_kernels
@pytest.mark.parametrize("options", [dict(signal="relative"), dict(signal="fisher"),
                                     dict(max_damping=3.0)])
def test_kernel_v2_options(options):
    hp = dataclasses.replace(HP, mode="grad", **options)
    assert kernels.supports(hp)
    inputs = _inputs("v2", SHAPES, torch.float32, KDEV)
    out = _run("fused", "v2", inputs, Context(grad_scale=2.0), hp)
    ref = _run("single", "v2", inputs, Context(grad_scale=2.0), hp)
    _check(out, ref, torch.float32)


@needs_kernels
@pytest.mark.parametrize("rule", RULE_NAMES)
def test_kernel_handles_unaligned_and_noncontiguous_tensors(rule):
    params, grads, stabs, steps = _inputs(rule, [(67, 9), (301,), (8, 8)], torch.float32, KDEV)
    # a transposed view (foreach fallback) and a contiguous slice at an odd address
    params[0], grads[0], stabs[0] = params[0].t(), grads[0].t(), stabs[0].t()
    params[1], grads[1], stabs[1] = params[1][1:], grads[1][1:], stabs[1][1:]
    assert not params[0].is_contiguous() and params[1].data_ptr() % 16 != 0
    inputs = (params, grads, stabs, steps)
    out = _run("fused", rule, inputs, Context(grad_scale=2.0))
    ref = _run("single", rule, inputs, Context(grad_scale=2.0))
    _check(out, ref, torch.float32, tol=1e-4)


@needs_kernels
def test_kernel_honours_reduce_sum_and_global_numels():
    # Two "ranks" in one process: each sees half of every tensor; reduce_sum adds the other
    # half's partial sums, so each half must come out as the full-tensor reference's half.
    rule = "v2"
    full = _inputs(rule, [(64,), (30, 6)], torch.float32, KDEV)
    ref = _run("single", rule, full, Context(), dataclasses.replace(HP, mode="grad"))
    halves = [[t.flatten()[: t.numel() // 2] for t in xs] for xs in full[:3]]
    others = [[t.flatten()[t.numel() // 2:] for t in xs] for xs in full[:3]]
    from swgl.kernels import triton_swgl

    # partial sums of the other half, in the order the kernels ask for them:
    # sum w^2, sum log s_hat over s_hat > 0, count of s_hat > 0
    def reduce_sum(partials, calls=[]):  # noqa: B006 - counts the reductions in order
        extra = torch.stack([_other(i, len(calls)) for i in range(len(others[0]))])
        calls.append(1)
        return partials + extra.to(partials.device)

    def _other(i, which):
        p_o, g_o, s_o = others
        w = p_o[i].float()
        if which == 0:
            return w.square().sum()
        n = full[0][i].numel()
        delta = 1e-8 + 1e-3 * (full[0][i].float().square().sum() / n).sqrt()
        r = (g_o[i].float().abs() / (w.abs() + delta)).clamp(max=1e20)
        s = s_o[i] * HP.alpha + r * (1 - HP.alpha)
        s_hat = s / (1 - HP.alpha ** int(full[3][i]))
        active = s_hat > 0
        if which == 1:
            return torch.where(active, s_hat, 1.0).log().sum()
        return active.sum().float()

    ctx = Context(reduce_sum=reduce_sum, numels=tuple(t.numel() for t in full[0]))
    g, s = _clone(halves[1]), _clone(halves[2])
    triton_swgl.swgl_pass(halves[0], g, s, full[3], dataclasses.replace(HP, mode="grad"), ctx,
                          rule=rule)
    for i in range(2):
        n = full[0][i].numel() // 2
        assert _rel(g[i], ref[0][i].flatten()[:n]) < 1e-5
        assert _rel(s[i], ref[1][i].flatten()[:n]) < 1e-5


@needs_kernels
@pytest.mark.parametrize("rows", [(), (2,)])
def test_segment_sums_total_each_tensors_programs_in_one_launch(rows):
    """The per-tensor sums of per-program partials (v4's EMA kernel hands them to the
    detector and to sharded all-reduces): each row summed over each tensor's own programs,
    a tensor of one program and one of several included, against a sum per slice."""
    from swgl.kernels import triton_swgl

    params = [torch.zeros(n, device=KDEV) for n in (1, 3 * triton_swgl.BLOCK + 5, 7,
                                                        triton_swgl.BLOCK)]
    lau = triton_swgl.Launch([params, params, params])
    partials = torch.randn(*rows, lau.nblocks, device=KDEV, dtype=torch.float32)
    first = lau.first.tolist()
    want = torch.stack([partials[..., a:b].double().sum(-1).float()
                        for a, b in zip(first, first[1:])], -1)
    got = triton_swgl.segment_sums(lau, partials)
    assert got.shape == (*rows, len(params))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@needs_cuda_kernels
@pytest.mark.parametrize("rule", ["v1", "v2"])
def test_kernel_tensor_over_2_31_bytes(rule):
    n = 2**29 + 1031  # 2 GiB + 4 KiB of fp32: offsets past 2^31 bytes need int64
    gen = torch.Generator(device="cuda").manual_seed(0)
    p = torch.randn(n, device="cuda", generator=gen)
    g = torch.randn(n, device="cuda", generator=gen) * 0.1
    s = torch.rand(n, device="cuda", generator=gen) + (0.5 if rule == "v1" else 0.0)
    steps = [torch.tensor(2.0)]
    g2, s2 = g.clone(), s.clone()
    # single: its tree-reduced sums stay accurate at this size (foreach's fp32 norms do not)
    before(rule, "single", [p], [g2], [s2], steps, HP, Context())
    before(rule, "fused", [p], [g], [s], steps, HP, Context())
    tail = slice(n - 5000, n)  # past the 2^31-byte mark
    torch.testing.assert_close(g[tail], g2[tail], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(s[tail], s2[tail], rtol=1e-5, atol=1e-7)
    assert _rel(g, g2) < 1e-5


@needs_cuda_kernels
@pytest.mark.parametrize("rule", RULE_NAMES)
def test_functional_auto_dispatch_uses_kernels_on_cuda(rule, monkeypatch):
    import swgl.rules

    calls = []
    r = RULES[rule]
    fused = r.before.fused
    traced = dataclasses.replace(r.before, fused=lambda *a: (calls.append(1), fused(*a))[1])
    monkeypatch.setitem(swgl.rules.RULES, rule, dataclasses.replace(r, before=traced))
    params, grads, stabs, steps = _inputs(rule, SHAPES, torch.float32, "cuda")
    ref_g, ref_s, ref_steps = _clone(grads), _clone(stabs), _clone(steps)
    kw = dict(rule=rule, alpha=0.9, lambda_reg=0.05, eps=1e-8, max_boost=10.0, mode="grad")
    assert swgl_fn(params, grads, stabs, steps, **kw).applied
    assert swgl_fn(params, ref_g, ref_s, ref_steps, **kw, fused=False).applied
    assert calls == [1]
    for a, b in zip(grads, ref_g):
        assert _rel(a, b) < 1e-5
    grads[2][0] = float("inf")
    before_s = _clone(stabs)
    assert not swgl_fn(params, grads, stabs, steps, **kw).applied
    assert all(torch.equal(a, b) for a, b in zip(stabs, before_s))


# -- v5: the default rule, its detector's signal taken in v4's EMA pass ----------------------

needs_fused = pytest.mark.skipif(
    not (kernels.runs_on(torch.device(KDEV)) or compiled.available()),
    reason="needs Triton (CUDA, or TRITON_INTERPRET=1) or torch.compile and a C++ compiler")
#: odd sizes, and one tensor large enough for the CPU's compiled functions
V5_SHAPES = [*SHAPES, (257, 259)]
V5_HP = Hyper(alpha=0.9, lambda_reg=3.0, eps=1e-8, max_boost=10.0, mode="update",
              consolidation=0.03, consolidation_horizon=20.0)
IMPL_KW = {"single": dict(foreach=False, fused=False),
           "foreach": dict(foreach=True, fused=False), "fused": dict(foreach=True, fused=True)}


def _v5_steps(impl, dtype, steps=8, scale=1024.0):
    """v5 through swgl() and swgl_after(), as the two-object pattern calls them, with
    loss-scaled grads that jump 30-fold at the fourth step (a shift: the detector starts past
    its refractory period) and a non-finite grad at the sixth (a skipped step). Returns the
    params and every state list, on the CPU."""
    device = KDEV if impl == "fused" and kernels.runs_on(torch.device(KDEV)) else "cpu"
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen).to(device=device, dtype=dtype) for s in V5_SHAPES]
    n0 = 0.01 * sum(p.numel() for p in params)      # the signal before the jump (std 0.1)
    stabs = [torch.zeros(s, device=device) for s in V5_SHAPES]
    extra = {"consolidated": [torch.zeros(s, device=device) for s in V5_SHAPES],
             "anchor": [p.float().clone() for p in params],
             "detector": [torch.tensor([60.0, n0, n0, 0.0], device=device) for _ in params]}
    counters = [torch.zeros((), device=device) for _ in params]
    options = {k: getattr(V5_HP, k) for k in ("alpha", "lambda_reg", "eps", "max_boost", "mode",
                                              "consolidation", "consolidation_horizon")}
    for t in range(steps):
        grads = [(torch.randn(s, generator=gen) * (0.1 if t < 3 else 3.0) * scale)
                 .to(device=device, dtype=dtype) for s in V5_SHAPES]
        if t == 5:
            grads[1][0] = float("nan")
        out = swgl_fn(params, grads, stabs, counters, rule="v5", grad_scale=scale,
                      extra_state=extra, **options, **IMPL_KW[impl])
        snapshots = [p.clone() for p in params]
        if t != 5:   # the base step (skipped on a non-finite grad, as a GradScaler skips it)
            for p, g in zip(params, grads):
                p.sub_((g.float() * (0.01 / scale)).to(dtype))
        swgl_after(params, snapshots, stabs, counters, out.aux, rule="v5", hp=V5_HP,
                   extra_state=extra, **IMPL_KW[impl])
    return {name: [t.cpu() for t in ts]
            for name, ts in (("params", params), ("stability", stabs), *extra.items())}


@pytest.mark.parametrize("impl", ["foreach", pytest.param("fused", marks=needs_fused)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_v5_variants_agree_through_a_shift_and_a_skipped_step(impl, dtype):
    """single == foreach == fused (Triton, or compiled on the CPU) for v5's both phases: odd
    sizes, loss-scaled grads; the detector fires at the jump and ignores the skipped step."""
    out, ref = _v5_steps(impl, dtype), _v5_steps("single", dtype)
    det = ref["detector"][0]
    assert float(det[3]) == 64.0 and float(det[0]) == 67.0   # the shift; 7 of 8 steps counted
    assert float(ref["consolidated"][0].abs().sum()) > 0
    # bf16 params: the variants round each step's update apart, and over 8 steps of this size
    # the params drift 2.7e-2 apart under the Triton kernels (as before v5's detector moved)
    tol = {"stability": 1e-5, "params": 1e-5 if dtype == torch.float32 else 5e-2,
           "detector": 1e-5}
    for name in ref:
        for a, b in zip(out[name], ref[name]):
            assert torch.isfinite(a).all()
            assert _rel(a, b) < tol.get(name, tol["params"]), name


@needs_kernels
@pytest.mark.parametrize("t, last, fires", [(60.0, 0.0, False), (150.0, 120.0, False),
                                           (150.0, 90.0, True)])
def test_the_detector_kernel_holds_its_warm_up_apart_from_its_refractory_period(
        t, last, fires, monkeypatch):
    """The Triton detector against its reference with a warm-up (100) other than the
    refractory period (50), at a jump of the signal: inside the warm-up, inside the
    refractory period after a shift, and past both."""
    from swgl.kernels import triton_consolidation as tc
    from swgl.rules import consolidation as cons

    monkeypatch.setattr(cons, "WARMUP", 100)
    det = torch.tensor([t, 1.0, 1.0, last], device=KDEV)
    n = torch.tensor(50.0, device=KDEV)
    ref, ref_shift = cons._detect(n.cpu(), det.cpu())
    shift = tc.detect(n, det, None, b_fast=cons.B_FAST, b_slow=cons.B_SLOW,
                      ratio=cons.SHIFT_RATIO, refractory=cons.REFRACTORY, warmup=cons.WARMUP)
    assert bool(ref_shift) is fires and bool(shift) is fires
    torch.testing.assert_close(det.cpu(), ref)


class _CountOps(TorchDispatchMode):
    """Counts the aten ops called outside the Triton interpreter (whose own tensor handling
    stands in for a kernel launch)."""

    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        frame = sys._getframe(1)
        while frame is not None and f"{os.sep}torch{os.sep}" in frame.f_code.co_filename:
            frame = frame.f_back
        if frame is None or f"{os.sep}triton{os.sep}" not in frame.f_code.co_filename:
            self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def _fused_before_ops(rule):
    """The aten ops of one fused before phase (its second call: plans are cached)."""
    params, grads, stabs, steps = _inputs("v4", [(64, 32), (64,), (32, 64), (32,)],
                                          torch.float32, KDEV)
    extra = None if rule == "v4" else {
        "consolidated": [torch.rand_like(p) for p in params],
        "anchor": [p.clone() for p in params],
        "detector": [torch.tensor([100.0, 1e6, 1e6, 1.0], device=KDEV) for _ in params]}
    options = dict(rule=rule, alpha=0.999, lambda_reg=3.0, eps=1e-8, max_boost=10.0,
                   mode="update", fused=True, extra_state=extra)
    swgl_fn(params, grads, stabs, steps, **options)
    with _CountOps() as count:
        swgl_fn(params, grads, stabs, steps, **options)
    return count.ops


@needs_kernels
def test_v5_fused_before_reads_the_grads_once_and_detects_in_one_kernel():
    """v5's detector takes its signal from v4's EMA pass (no torch._foreach_norm over the
    grads) and steps in one kernel: v5's fused before phase is a few aten ops more than v4's
    (42 more when the detector had its own norm and some thirty ops on 0-d tensors; 8, then 14
    with the group's freshest detector copy picked on the device: a stack, an argmax, a
    select; 15 since the kernel advances a copy of a group's only copy, so that the state
    holds the old detector until the caller stores the new one: v7 reads the last shift)."""
    v4, v5 = _fused_before_ops("v4"), _fused_before_ops("v5")
    assert not any("_foreach_norm" in op for op in v5), v5
    assert sum(v5.values()) - sum(v4.values()) <= 15, (v4, v5)


# -- CPU: cache-blocked foreach ---------------------------------------------------------------


@pytest.mark.parametrize("signal", ["relative", "fisher"])
@pytest.mark.parametrize("rule", [r for r in RULE_NAMES if r != "v4"])  # v4 is not blocked
def test_blocked_foreach_matches_reference(rule, signal, monkeypatch):
    from swgl.kernels import blocked

    monkeypatch.setattr(blocked, "CHUNK", 64)  # several chunks per tensor, a partial last one
    shapes = [(3,), (7, 13), (300,), (65,)]
    inputs = _inputs(rule, shapes, torch.float32, "cpu")
    inputs[0][3] = inputs[0][3][::2]  # non-contiguous: stays one chunk
    inputs[1][3] = inputs[1][3][::2]
    inputs[2][3] = inputs[2][3][::2]
    hp = dataclasses.replace(HP, signal=signal, max_damping=4.0)
    assert blocked.worth_it(inputs[0]) and kernels.supports(hp)
    out = _run(blocked.BLOCKED[rule], rule, inputs, Context(grad_scale=4.0), RULES[rule].hyper(hp))
    ref = _run("single", rule, inputs, Context(grad_scale=4.0), hp)
    _check(out, ref, torch.float32)
    if rule == "v1":  # elementwise: bit-exact with the unblocked foreach
        plain = _run("foreach", rule, inputs, Context(grad_scale=4.0), hp)
        assert all(torch.equal(a, b) for a, b in zip(out[0], plain[0]))


@pytest.mark.skipif(kernels._INTERPRET, reason="the interpreter sends CPU tensors to Triton")
def test_functional_uses_blocked_foreach_on_cpu(monkeypatch):
    from swgl.kernels import blocked

    calls = []
    for rule in ("v1", "v2"):
        impl = blocked.BLOCKED[rule]
        monkeypatch.setitem(blocked.BLOCKED, rule,
                            lambda *a, impl=impl: (calls.append(1), impl(*a))[1])
        params, grads, stabs, steps = _inputs(rule, [(40000,), (3,)], torch.float32, "cpu")
        swgl_fn(params, grads, stabs, steps, rule=rule, alpha=0.9, lambda_reg=0.0, eps=1e-8,
                max_boost=10.0, mode="grad")
    assert calls == [1]  # v1 only: v2 keeps whole-tensor foreach
