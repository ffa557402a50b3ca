"""Seed 001, flaws #8/#9: the stability EMA reads the RAW gradient, never the modulated one.

A brute-force reference replays the EMA from the raw grads the test hands in; if any rule,
implementation or API read its own output (c * g) back into the EMA, the states would differ
(the grads span 6 decades, so c is far from 1 for many elements).
"""

from __future__ import annotations

import pytest
import torch

from swgl import SWGL, SWGLWrapper
from swgl.rules.normalised import WEIGHT_FLOOR

ALPHA, EPS, STEPS = 0.9, 1e-8, 4


def _signal(rule: str, signal: str, g: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    g, w = g.double(), w.double()
    if rule.startswith("v1"):
        return g.abs() / (w.abs() + EPS)
    if signal == "relative":
        delta = EPS + WEIGHT_FLOOR * w.square().mean().sqrt()
        return g.abs() / (w.abs() + delta)
    return (g * w).abs() if signal == "utility" else g.square()


def _grads(shapes, step: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(100 + step)
    # log-uniform magnitudes over 6 decades: the scale c is far from 1 for many elements
    return [torch.randn(s, generator=gen) * torch.exp(torch.empty(s).uniform_(-7, 7, generator=gen))
            for s in shapes]


CASES = [
    ("v1", None, "grad", True),  # the seed's rules read no signal option
    ("v1", None, "grad", False),
    ("v1-paper", None, "grad", True),
    ("v2", "relative", "grad", True),
    ("v2", "relative", "grad", False),
    ("v2", "utility", "grad", True),
    ("v2", "fisher", "grad", True),
    ("v2", "relative", "update", True),
    ("v2", "relative", "update", False),
    ("v3", "relative", "grad", True),
    ("v3", "utility", "update", True),
]


@pytest.mark.parametrize("api", ["two-object", "wrapper"])
@pytest.mark.parametrize(("rule", "signal", "mode", "foreach"), CASES)
def test_ema_sees_the_raw_gradient(api, rule, signal, mode, foreach):
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(7, 5)), torch.nn.Parameter(torch.randn(11))]
    options = dict(alpha=ALPHA, eps=EPS, rule=rule, signal=signal, mode=mode, foreach=foreach,
                   lambda_reg=0.0)
    if api == "two-object":
        opt = SWGL(params, **options)
    else:  # lr=0: the weights stay put, so the reference sees the same w at every step
        opt = SWGLWrapper(params, base=torch.optim.SGD, base_kwargs={"lr": 0.0}, **options)
    init = 1.0 if rule.startswith("v1") else 0.0
    expected = [torch.full(p.shape, init, dtype=torch.float64) for p in params]
    modulated_far_from_raw = False
    for step in range(STEPS):
        raw = _grads([p.shape for p in params], step)
        for p, g in zip(params, raw):
            p.grad = g.clone()
        opt.step()
        for i, (p, g) in enumerate(zip(params, raw)):
            expected[i] = ALPHA * expected[i] + (1 - ALPHA) * _signal(rule, signal, g, p.detach())
            if mode == "grad":
                modulated_far_from_raw |= bool(((p.grad / g).abs().log().abs() > 1.0).any())
    for p, ref in zip(params, expected):
        torch.testing.assert_close(opt.stability(p).double(), ref, rtol=1e-5, atol=1e-30)
    if mode == "grad":  # the check has teeth: the grads the EMA did not see differ a lot
        assert modulated_far_from_raw
