"""Hostile inputs (issue 9): every rule x every storage x foreach/single, property-based.

Grads and weights are drawn from zeros, subnormals, +-1e30, mixed signs and ordinary values;
grads may carry an inf or a NaN. After every step:

* a call with a non-finite grad changed nothing: state, step counters and grads bit-identical;
* otherwise the state (every stored tensor, and the fp32 stability the rule reads) is finite
  and non-negative; for v2 and v3 it stays below ``R_MAX`` (swgl.rules: the ceiling that keeps the
  EMA finite for any finite gradient), up to one rounding of the storage format;
* the factor applied to each gradient is within the rule's documented range
  (swgl.rules and docs/algorithm.md: v2 ``[1/max_damping, max_boost]``, v3
  ``[1/max_damping, 1]``, v1 at most ``max_boost``, v1-paper at least ``1/max_boost``);
* the global RNG is untouched (stochastic rounding seeds its own generator);
* the same inputs give bit-identical results.

v1's state is not bounded by design (the seed's formula, kept bit-exact), but with finite
grads (|g| <= 1e30) and ``eps >= 1e-8`` every relative impact is below 1e38, so it stays
finite here. The formats that store means (grouped, grouped-block, factored) sum before they
divide, so a block of v1 stabilities near 1e38 overflows to inf although its mean is finite
(pinned by the strict xfail below); v1 gets ``eps >= 1e-3`` (impacts <= 1e33) on them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from swgl import SWGL, functional
from swgl.kernels import blocked
from swgl.rules import RULES, Hyper
from swgl.rules.normalised import R_MAX
from swgl.state import STORAGES
from swgl.state.blockwise8 import dequantize

SHAPES = [(3, 4), (5,), (2, 1, 3), ()]
#: A tensor over one CPU chunk sends foreach through swgl.kernels.blocked.
BIG = (blocked.CHUNK // 128 + 1, 128)
#: fp32-exact, so numpy arrays take them as drawn
SPECIAL = [float(np.float32(x)) for x in
           (0.0, -0.0, 1e-45, -1e-45, 1e-40, -1e-38, 1e30, -1e30, 1.0, -1.0, 3e-3)]
HUGE = float(np.float32(1e30))
#: One rounding of a stored value: bf16 rounds up by < 2^-8, blockwise8's top level by ~1e-6.
ROUNDING = 1.0 + 2.0**-7
#: Absolute slack for products in the subnormal range (one subnormal ulp is 1.4e-45).
SUBNORMAL_ATOL = 1e-44

finite_values = st.one_of(
    st.sampled_from(SPECIAL),
    st.floats(-HUGE, HUGE, width=32, allow_subnormal=True),
)


def tensors(shape):
    return arrays(np.float32, shape, elements=finite_values).map(
        lambda a: torch.from_numpy(a.copy())
    )


@st.composite
def step_inputs(draw, shapes):
    """(weights, grads) for one step; one grad may be poisoned with inf/-inf/NaN."""
    weights = [draw(tensors(s)) for s in shapes]
    grads = [draw(tensors(s)) for s in shapes]
    poison = draw(st.sampled_from([None, None, None, math.inf, -math.inf, math.nan]))
    if poison is not None:
        i = draw(st.integers(0, len(shapes) - 1))
        if grads[i].numel():
            j = draw(st.integers(0, grads[i].numel() - 1))
            grads[i].view(-1)[j] = poison
    return weights, grads


MEAN_FORMATS = ("grouped", "grouped-block", "factored")
#: The bounded rules: EMA below R_MAX, factors in factor_range().
BOUNDED = ("v2", "v3")


def factor_range(rule: str, opts: dict) -> tuple[float, float]:
    low = 1.0 / (opts.get("max_damping") or opts["max_boost"])
    return low, (1.0 if rule == "v3" else opts["max_boost"])


def options(rule: str, storage: str = "fp32"):
    small_eps = rule not in BOUNDED and storage in MEAN_FORMATS
    base = {
        "alpha": st.sampled_from([0.0, 0.5, 0.9, 0.99]),
        "lambda_reg": st.sampled_from([0.0, 0.0, 0.01, 2.0]),
        "eps": st.sampled_from([1e-3, 1.0] if small_eps else [1e-8, 1e-3, 1.0]),
        "max_boost": st.sampled_from([1.0, 2.0, 10.0, 1e6]),
    }
    if rule in BOUNDED:
        base |= {
            "signal": st.sampled_from(functional.SIGNALS),
            "max_damping": st.sampled_from([None, 1.0, 3.0]),
            "shock": st.sampled_from([0.0, 0.0, 2.0]),
        }
    return st.fixed_dictionaries(base)


def _snapshot(opt) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in opt.state[p].items()}
            for g in opt.param_groups for p in g["params"]]


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical, NaNs included (the int view compares payloads and signed zeros)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(ints), b.contiguous().view(ints))


def _stored_values(storage: str, entry: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The stability values a format keeps between steps, as fp32."""
    if storage == "blockwise8":
        return [dequantize(entry["stability_codes"], entry["stability_log2_lo"],
                           entry["stability_log2_step"])]
    return [v.float() for k, v in entry.items() if k != "step"]


def _check_state(opt, storage: str, rule: str) -> None:
    for group in opt.param_groups:
        for i, p in enumerate(group["params"]):
            entry = opt.state[p]
            for k, v in entry.items():
                if v.is_floating_point():
                    assert torch.isfinite(v).all(), f"param {i}: {k} holds non-finite values"
            values = [*_stored_values(storage, entry), opt.stability(p)]
            for v in values:
                assert torch.isfinite(v).all(), f"param {i}: stability non-finite"
                assert (v >= 0).all(), f"param {i}: negative stability"
            if rule in BOUNDED:
                # factored's rank-1 reconstruction can exceed its stored means; the bound is
                # on what is stored, which is what carries over to the next step
                top = max(float(v.max()) if v.numel() else 0.0 for v in values[:-1])
                assert top <= R_MAX * ROUNDING, f"param {i}: stored stability {top} > R_MAX"


def _check_scale(rule: str, opts: dict, old: torch.Tensor, new: torch.Tensor,
                 stability: torch.Tensor) -> None:
    """The factor new/old is in the rule's range (only observable with lambda_reg = 0)."""
    a, b = old.abs().double(), new.abs().double()
    max_boost = opts["max_boost"]
    if rule in BOUNDED:
        low, high = factor_range(rule, opts)
        assert (b <= high * a * (1 + 1e-6) + SUBNORMAL_ATOL).all()
        assert (b >= low * a * (1 - 1e-6) - SUBNORMAL_ATOL).all()
        assert (old.sign() * new.sign() >= 0).all(), f"{rule} flipped a gradient's sign"
    elif rule == "v1":
        assert (b <= max_boost * a * (1 + 1e-6) + SUBNORMAL_ATOL).all()
    else:  # v1-paper: g / clamp(s, max=max_boost); s = 0 divides by zero (the seed's formula)
        # A zero gradient can leave an element's working s at 0 (0/0 = NaN) even where a
        # grouped or factored format stores a positive mean for it.
        ok = (stability > 0) & (a > 0)
        assert (b[ok] >= a[ok] / max_boost * (1 - 1e-6) - SUBNORMAL_ATOL).all()


def _run(rule, storage, foreach, opts, steps, big=False):
    """Drive SWGL through ``steps``; check every invariant; return final state and grads."""
    shapes = SHAPES + ([BIG] if big else [])
    params = [torch.zeros(s, requires_grad=True) for s in shapes]
    opt = SWGL(params, rule=rule, storage=storage, foreach=foreach, fused=False, mode="grad",
               **opts)
    outs = []
    for weights, grads in steps:
        if big:
            weights = [*weights, weights[0].flatten().repeat(math.prod(BIG))[:math.prod(BIG)]
                       .view(BIG)]
            grads = [*grads, grads[0].flatten().repeat(math.prod(BIG))[:math.prod(BIG)]
                     .view(BIG)]
        with torch.no_grad():
            for p, w, g in zip(params, weights, grads):
                p.copy_(w)
                p.grad = g.clone()
        before = _snapshot(opt)
        rng = torch.get_rng_state()
        opt.step()
        assert torch.equal(torch.get_rng_state(), rng), "a step touched the global RNG"
        finite = all(torch.isfinite(g).all() for g in grads)
        if not finite:
            after = _snapshot(opt)
            for b, a in zip(before, after):
                # SWGL(params) makes all but the stability at a param's first step, skipped
                # or not (as the wrapper does): what existed is unchanged
                assert b.keys() <= a.keys()
                assert all(_same(b[k], a[k]) for k in b), "a skipped step changed the state"
            for p, g in zip(params, grads):
                assert _same(p.grad, g), "a skipped step changed a gradient"
        else:
            for b, p in zip(before, params):  # counted, or restarted at 1 by a shock
                assert float(opt.state[p]["step"]) in (float(b.get("step", 0)) + 1, 1.0)
        _check_state(opt, storage, rule)
        if finite and opts["lambda_reg"] == 0.0:
            for p, g in zip(params, grads):
                _check_scale(rule, opts, g, p.grad, opt.stability(p))
        outs.append([p.grad.clone() for p in params])
    return _snapshot(opt), outs


#: Examples per (rule, storage, path): with 65 combinations, 6 took the file to 3 min 20 s on
#: the 2-core VM (a fifth of CI's tests, fourteenth session); 4 give 260 examples in all
#: (derandomized: the same ones on every run).
EXAMPLES = 4
#: these tests check the rescaled grads (mode="grad"): the rules that run in it (not v5,
#: whose pull needs the update mode; tests/test_rule_v5.py)
GRAD_RULES = sorted(r for r in RULES if "grad" in RULES[r].modes)
COMBOS = [(r, s, f) for r in GRAD_RULES for s in STORAGES for f in (True, False)]


@pytest.mark.parametrize("rule, storage, foreach", COMBOS)
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_hostile_inputs_keep_the_state_sane(rule, storage, foreach, data):
    opts = data.draw(options(rule, storage), label="options")
    steps = data.draw(st.lists(step_inputs(SHAPES), min_size=1, max_size=3), label="steps")
    big = foreach and storage == "fp32" and data.draw(st.booleans(), label="blocked")
    state, grads = _run(rule, storage, foreach, opts, steps, big)
    # Deterministic: a fresh optimizer fed the same inputs ends bit-identical.
    state2, grads2 = _run(rule, storage, foreach, opts, steps, big)
    for a, b in zip(state, state2):
        assert all(_same(a[k], b[k]) for k in a)
    for xs, ys in zip(grads, grads2):
        assert all(_same(x, y) for x, y in zip(xs, ys))


@pytest.mark.parametrize("rule", BOUNDED)
@pytest.mark.parametrize("foreach", [True, False])
@settings(max_examples=15, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_update_factors_stay_in_range(rule, foreach, data):
    """mode='update' scales the base optimizer's step by a factor in the rule's range, whatever
    the grads, weights, signal or loss scale."""
    opts = data.draw(options(rule), label="options")
    weights, grads = data.draw(step_inputs(SHAPES), label="inputs")
    grad_scale = data.draw(st.sampled_from([1.0, 65536.0, 2.0**-10]), label="grad_scale")
    stabilities = [torch.zeros(s) for s in SHAPES]
    steps = [torch.zeros(()) for _ in SHAPES]
    finite = all(torch.isfinite(g).all() for g in grads)  # (the call writes lambda_reg's term)
    out = functional.swgl(weights, grads, stabilities, steps, rule=rule, mode="update",
                          foreach=foreach, fused=False, grad_scale=grad_scale, **opts)
    if not finite:
        assert not bool(out.applied)
        assert all(float(t) == 0 for t in steps) and all(not s.any() for s in stabilities)
        return
    before = [torch.zeros(s) for s in SHAPES]
    params = [torch.ones(s) for s in SHAPES]  # a base step of +1 everywhere
    hp = Hyper(**opts, mode="update")
    functional.swgl_after(params, before, stabilities, steps, out.aux, rule=rule, hp=hp,
                          foreach=foreach, fused=False)
    low, high = factor_range(rule, opts)
    for c, s in zip(params, stabilities):
        assert torch.isfinite(c).all() and torch.isfinite(s).all()
        assert (c >= low * (1 - 1e-6)).all() and (c <= high * (1 + 1e-6)).all()
        assert (s >= 0).all() and (s <= R_MAX * (1 + 1e-6)).all()


@pytest.mark.parametrize("rule", GRAD_RULES)
@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_foreach_and_single_agree_on_hostile_inputs(rule, data):
    """The two implementations of a rule give the same state and grads (fp32 state)."""
    opts = data.draw(options(rule), label="options")
    weights, grads = data.draw(step_inputs(SHAPES), label="inputs")
    results = []
    for foreach in (True, False):
        g = [x.clone() for x in grads]
        s = [torch.full(x.shape, RULES[rule].init_value) for x in weights]
        t = [torch.zeros(()) for _ in weights]
        functional.swgl(weights, g, s, t, rule=rule, foreach=foreach, fused=False, **opts)
        results.append((g, s))
    (g1, s1), (g2, s2) = results
    for a, b in zip(s1, s2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=SUBNORMAL_ATOL, equal_nan=True)
    # grads: v2/v3's decay term lambda_reg * clamp(s_hat / m - 1, 0) * w. Foreach takes the
    # reference m from fp32 log-sums (by design, issue 13), single from fp64 ones, so s_hat / m
    # may differ by some fp32 ulps (a CI run found 9, 1.07e-6, at a weight of 6.9e19 with
    # subnormal grads; 4e-6 bounds 33). Times a weight of 1e20, that rounding is far above a
    # subnormal gradient: the allowance scales with lambda_reg * |w|
    lam = opts.get("lambda_reg") or 0.0
    for a, b, w in zip(g1, g2, weights):
        assert (a.shape, a.dtype) == (b.shape, b.dtype)
        bound = SUBNORMAL_ATOL + 1e-4 * b.abs() + lam * 4e-6 * w.abs().nan_to_num(posinf=0.0)
        close = (a == b) | (a.isnan() & b.isnan()) | ((a - b).abs() <= bound)
        assert bool(close.all()), (a, b)


@pytest.mark.xfail(strict=True, reason="issue 9 finding: grouped/factored sum a block of v1 "
                   "stabilities in fp32 before dividing, so finite values near 1e38 store inf")
@pytest.mark.parametrize("storage", MEAN_FORMATS)
def test_v1_mean_formats_store_finite_means_of_huge_stabilities(storage):
    p = torch.zeros(3, 4, requires_grad=True)
    opt = SWGL([p], rule="v1", storage=storage, eps=1e-8, lambda_reg=0.0, alpha=0.0)
    p.grad = torch.full((3, 4), HUGE)  # |g| / eps = 1e38: finite, and so is every mean
    opt.step()
    _check_state(opt, storage, "v1")


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("signal", functional.SIGNALS)
@pytest.mark.parametrize("rule", sorted(RULES))
def test_zero_dim_params(rule, signal, foreach):
    """A 0-d param (a learned scalar): v2's single-tensor path broadcast a shape-(1,) weight
    floor into it in place and raised (fixed in issue 9)."""
    p = torch.tensor(0.5, requires_grad=True)
    opts = {"signal": signal} if rule in BOUNDED else {}
    opt = SWGL([p], rule=rule, foreach=foreach, fused=False, **opts)
    for g in (1.0, -3.0):
        p.grad = torch.tensor(g)
        opt.step()
        assert p.grad.shape == () and torch.isfinite(p.grad)
    assert opt.stability(p).shape == ()
