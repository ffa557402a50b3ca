"""The math of each rule: v1 bit-exact against hand-written references, implementations in
parity with each other, and v2's documented bounds."""

import pytest
import torch

from rulecall import before
from swgl.rules import RULES, Context, Hyper
from swgl.rules.normalised import R_MAX

HP = Hyper(alpha=0.9, lambda_reg=0.01, eps=1e-8, max_boost=10.0)


def _random_problem(seed, dtype=torch.float32, shapes=((7, 5), (13,), (3, 4, 2), (1,))):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    grads = [torch.randn(s, generator=gen).mul(0.1).to(dtype) for s in shapes]
    # A few weights near zero: where v1's relative impact explodes.
    params[0][0, :3] = torch.tensor([0.0, 1e-9, -1e-7], dtype=dtype)
    return params, grads


def _clone(ts):
    return [t.clone() for t in ts]


def reference_v1_step(p, g, s, alpha, lambda_reg, eps, max_boost):
    """The seed's reference code, op for op: g * min(1/(s+eps), B)."""
    g, s = g.clone(), s.clone()
    relative_impact = g.abs() / (p.abs() + eps)
    s.mul_(alpha).add_(relative_impact, alpha=1.0 - alpha)
    lr_scaler = 1.0 / (s + eps)
    lr_scaler.clamp_(max=max_boost)
    g.mul_(lr_scaler)
    g.add_(p * (s - 1.0).clamp(min=0.0) * lambda_reg)
    return g, s


def reference_v1_paper_step(p, g, s, alpha, lambda_reg, eps, max_boost):
    """The formula of the seed's README, with the reference code's EMA and penalty:
    g / clamp(s, max=B)."""
    g, s = g.clone(), s.clone()
    relative_impact = g.abs() / (p.abs() + eps)
    s.mul_(alpha).add_(relative_impact, alpha=1.0 - alpha)
    g.div_(s.clamp(max=max_boost))
    g.add_(p * (s - 1.0).clamp(min=0.0) * lambda_reg)
    return g, s


@pytest.mark.parametrize(
    "rule, reference", [("v1", reference_v1_step), ("v1-paper", reference_v1_paper_step)]
)
@pytest.mark.parametrize("impl", ["single", "foreach"])
def test_v1_is_bit_exact_against_hand_written_reference(rule, reference, impl):
    params, grads = _random_problem(0)
    stabilities = [torch.ones_like(p) for p in params]
    steps = [torch.zeros(()) for _ in params]
    ref_s = _clone(stabilities)
    for it in range(5):
        step_grads = [g * (1 + it) for g in grads]  # fresh grads each step
        ref_out = []
        for i, (p, g) in enumerate(zip(params, step_grads)):
            new_g, ref_s[i] = reference(p, g, ref_s[i], HP.alpha, HP.lambda_reg, HP.eps,
                                        HP.max_boost)
            ref_out.append(new_g)
        before(rule, impl, params, step_grads, stabilities, steps, HP, Context())
        for got, want in zip(step_grads, ref_out):
            assert torch.equal(got, want)
        for got, want in zip(stabilities, ref_s):
            assert torch.equal(got, want)


def test_v1_and_v1_paper_differ_where_the_seed_is_ambiguous():
    params, grads = _random_problem(1)
    out = {}
    for rule in ("v1", "v1-paper"):
        s = [torch.ones_like(p) for p in params]
        for _ in range(60):
            g = [x * 0.01 for x in grads]
            before(rule, "single", params, g, s, [torch.zeros(()) for _ in params], HP, Context())
        out[rule] = g
    # s falls below 1/B for most elements: v1 caps the boost at B, v1-paper does not.
    assert max(g.abs().max() for g in out["v1-paper"]) > max(g.abs().max() for g in out["v1"])


def _run(rule, impl, params, grads, n_steps=4, ctx=None):
    ctx = ctx or Context()
    init = RULES[rule].init_value
    stabilities = [torch.full(p.shape, init) for p in params]
    steps = [torch.zeros(()) for _ in params]
    history = []
    for it in range(n_steps):
        g = [x * (1 + 0.5 * it) for x in grads]
        for t in steps:
            t.add_(1)
        before(rule, impl, params, g, stabilities, steps, HP, ctx)
        history.append(g)
    return history, stabilities


@pytest.mark.parametrize("rule", sorted(r for r in RULES if "grad" in RULES[r].modes))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_foreach_matches_single_tensor(rule, dtype):
    params, grads = _random_problem(2, dtype)
    g_single, s_single = _run(rule, "single", params, grads)
    g_foreach, s_foreach = _run(rule, "foreach", params, grads)
    # foreach and single-tensor ops round differently (fused multiply-adds): ~1e-5 relative.
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-3)
    for a, b in zip(s_single, s_foreach):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    for step_a, step_b in zip(g_single, g_foreach):
        for a, b in zip(step_a, step_b):
            assert a.dtype == dtype
            torch.testing.assert_close(a.float(), b.float(), **tol)


@pytest.mark.parametrize("impl", ["single", "foreach"])
def test_v2_scale_is_bounded_and_centred(impl):
    params, grads = _random_problem(3)
    params[0].zero_()  # all-zero weights: v1 would divide by eps
    before = _clone(grads)
    history, stabilities = _run("v2", impl, params, grads, n_steps=1)
    for g_new, g_old in zip(history[0], before):
        ratio = (g_new / g_old)[g_old.abs() > 1e-6]
        # lambda_reg adds a small decay term; the factor itself is in [1/B, B].
        assert ratio.min() > 1.0 / HP.max_boost - 0.05
        assert ratio.max() < HP.max_boost + 0.05
    for s in stabilities:
        assert torch.isfinite(s).all() and (s >= 0).all() and (s <= R_MAX).all()


def test_v2_does_not_boost_everything_at_start():
    """v1's EMA starts at 1 and falls to |g|/|w|, so nearly every element runs at max_boost;
    v2's bias-corrected, per-tensor-normalised factor keeps the typical element near 1."""
    params, grads = _random_problem(4, shapes=((64, 32),))
    hp = Hyper(alpha=0.9, lambda_reg=0.0, eps=1e-8, max_boost=10.0)
    ratios = {}
    for rule in ("v1", "v2"):
        s = [torch.full((64, 32), RULES[rule].init_value)]
        step = [torch.zeros(())]
        for _ in range(50):
            g = [grads[0] * 0.01]
            step[0].add_(1)
            before(rule, "foreach", params, g, s, step, hp, Context())
        ratios[rule] = (g[0] / (grads[0] * 0.01)).median().item()
    assert ratios["v1"] == pytest.approx(HP.max_boost, rel=1e-3)
    assert 0.5 < ratios["v2"] < 2.0


def test_v2_grad_scale_is_transparent():
    """Grads carrying a loss scale S give S times the unscaled result, and the same state."""
    params, grads = _random_problem(5)
    g_plain, s_plain = _run("v2", "foreach", params, grads)
    scaled = [g * 1024.0 for g in grads]
    g_scaled, s_scaled = _run("v2", "foreach", params, scaled, ctx=Context(grad_scale=1024.0))
    for a, b in zip(s_plain, s_scaled):
        torch.testing.assert_close(a, b)
    for a, b in zip(g_plain[-1], g_scaled[-1]):
        torch.testing.assert_close(a * 1024.0, b)


@pytest.mark.parametrize("impl", ["single", "foreach"])
def test_v2_reference_ignores_weights_that_never_get_a_gradient(impl):
    """Dead units: exact-zero grads must not drag the geometric mean to 0 and push every live
    element to the damping floor."""
    gen = torch.Generator().manual_seed(6)
    w = torch.randn(40, 10, generator=gen)
    g = torch.randn(40, 10, generator=gen)
    g_dead = g.clone()
    g_dead[:10] = 0.0  # a quarter of the rows are dead
    hp = Hyper(alpha=0.9, lambda_reg=0.0, eps=1e-8, max_boost=10.0)
    out = {}
    for name, grad in (("live", g[10:]), ("with-dead", g_dead)):
        weights = w[10:] if name == "live" else w
        grads = [grad.clone()]
        before("v2", impl, [weights], grads, [torch.zeros_like(weights)],
                                   [torch.ones(())], hp, Context())
        out[name] = grads[0][-30:] / grad[-30:]
    torch.testing.assert_close(out["with-dead"], out["live"], rtol=1e-4, atol=1e-6)
