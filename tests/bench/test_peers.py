"""The boundary-free peers: stream EWC / MAS / SI (UPGD's repository) and MESU."""

import dataclasses
import inspect
import math

import pytest
import torch
import torch.nn as nn

from swgl.bench.methods import (
    METHODS,
    OPTIMIZERS,
    Context,
    Method,
    bgd,
    make_method,
    stream_ewc,
    stream_mas,
    stream_si,
)
from swgl.bench.methods import mesu as mesu_mod
from swgl.bench.methods.bgd import BGD
from swgl.bench.methods.mesu import MESU, _mesu_update
from swgl.bench.methods.stream_ewc import StreamEWC
from swgl.bench.methods.stream_si import StreamSI
from swgl.bench.runner import run_cell

MODULES = (stream_ewc, stream_mas, stream_si, mesu_mod, bgd)
PEERS = [spec.name for module in MODULES for spec in module.SPECS]


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 3))


def _data(seed=0, n=96):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, :3].argmax(1))                          # learnable, 3 classes
    return x, y


def _method(name, model, **options):
    spec = METHODS[name].with_options(options, OPTIMIZERS[METHODS[name].optimizer])
    return make_method(spec, model, Context(n_outputs=3, batch_size=16))


def test_specs_are_registered_data_with_valid_tune_grids():
    assert PEERS == ["stream-ewc", "stream-ewc-adam", "stream-mas", "stream-mas-adam",
                     "stream-si", "stream-si-adam", "mesu", "bgd"]
    for name in PEERS:
        spec = METHODS[name]
        grid = spec.strategy.tune_grid
        valid = set(spec.valid_options(OPTIMIZERS[spec.optimizer]))
        assert grid and set(grid) <= valid, (name, grid)
        assert all(len(values) >= 2 for values in grid.values())
        # A strategy option must not shadow an optimizer keyword (Adam's eps vs SI's xi).
        opt_keys = set(inspect.signature(OPTIMIZERS[spec.optimizer].cls).parameters)
        assert not set(spec.strategy.hparams) & opt_keys, name


@pytest.mark.parametrize("name", PEERS)
def test_never_uses_task_boundaries(name):
    strategy = METHODS[name].strategy
    assert strategy.begin_task is Method.begin_task and strategy.end_task is Method.end_task


@pytest.mark.parametrize("name", PEERS)
def test_trains_a_tiny_model(name):
    # MESU/BGD's first step on the mean gradient is lr * sigma_init^2 * batch = 0.16 here.
    lr = {"sgd": 0.1, "adam": 1e-2, "mesu": 25.0, "bgd": 25.0}[METHODS[name].optimizer]
    method = _method(name, _model(), lr=lr)
    x, y = _data()
    losses = []
    for _ in range(12):
        for i in range(0, len(x), 16):
            losses.append(float(method.observe(x[i:i + 16], y[i:i + 16], torch.zeros(16))))
    assert all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:6]) / 6, sum(losses[-6:]) / 6
    assert last < 0.7 * first, (name, first, last)


# -- the pull toward the anchor --

def _one_weight(cls, options):
    model = nn.Linear(1, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    return model.weight, cls(model, opt, Context(n_outputs=1, batch_size=1), options)


def test_stream_ewc_pull_sign_and_size_by_hand():
    bw, bi, lam = 0.9, 0.8, 3.0
    w, method = _one_weight(StreamEWC, {"lam": lam, "beta_weight": bw, "beta_importance": bi})
    with torch.no_grad():
        w.fill_(1.0)
    w.grad = torch.full_like(w, 0.5)
    method.before_step()
    # Step 1: the bias-corrected anchor is the weight itself, so no pull.
    assert w.grad.item() == pytest.approx(0.5)
    with torch.no_grad():
        w.fill_(2.0)                                   # moved away from the anchor (up)
    w.grad = torch.full_like(w, -0.25)
    method.before_step()
    anchor = (bw * (1 - bw) * 1.0 + (1 - bw) * 2.0) / (1 - bw ** 2)
    fisher = (bi * (1 - bi) * 0.5 ** 2 + (1 - bi) * 0.25 ** 2) / (1 - bi ** 2)
    expected = -0.25 + lam * fisher * (2.0 - anchor)
    assert anchor < 2.0 and expected > -0.25          # pulls the weight back down
    assert w.grad.item() == pytest.approx(expected, rel=1e-6)


def test_stream_si_negative_importance_does_not_push_away():
    w, method = _one_weight(StreamSI, {"lam": 100.0})
    for value, grad in ((0.0, 1.0), (1.0, 1.0), (2.0, -1.0)):
        # The weight moves up although the gradient says "go down" next: negative work.
        with torch.no_grad():
            w.fill_(value)
        w.grad = torch.full_like(w, grad)
        method.before_step()
    assert w.grad.item() == pytest.approx(-1.0)        # F clamped at 0: no pull at all


# -- parity with a transliteration of the reference code --

def _reference_step(kind, state, p, g, lr, lam, bw, bi, eps=1e-3):  # eps: our xi
    """mohmdelsayed/upgd core/optim/{ewc,mas,synaptic_intelligence}.py, one tensor, SGD
    (SI with our two documented changes: w_prev starts at w, importance clamped at 0)."""
    if not state:
        state.update(step=0, w=torch.zeros_like(p), f=torch.zeros_like(p),
                     d=torch.zeros_like(p), prev=p.clone())
    state["step"] += 1
    t = state["step"]
    state["w"].mul_(bw).add_(p, alpha=1 - bw)
    bcw = 1 - bw ** t
    if kind == "si":
        state["f"].mul_(bi).add_(g * (state["prev"] - p), alpha=1 - bi)
        state["d"].mul_(bi).add_(state["prev"] - p, alpha=1 - bi)
        bc = 1 - bi ** t
        fisher = (state["f"].div(bc).div(state["d"].pow(2).div(bc ** 2).add(eps))).clamp(min=0)
        state["prev"] = p.clone()
    else:
        state["f"].mul_(bi).add_(g ** 2 if kind == "ewc" else g.abs(), alpha=1 - bi)
        fisher = state["f"] / (1 - bi ** t)
    p.add_(g + lam * fisher * (p - state["w"] / bcw), alpha=-lr)


@pytest.mark.parametrize("name, kind, lam", [("stream-ewc", "ewc", 50.0),
                                             ("stream-mas", "mas", 5.0),
                                             ("stream-si", "si", 0.5)])
def test_sgd_variant_matches_the_reference_code(name, kind, lam):
    lr, bw, bi = 0.1, 0.9, 0.8
    model, ref_model = _model(), _model()
    method = _method(name, model, lr=lr, lam=lam, beta_weight=bw, beta_importance=bi)
    states = [{} for _ in ref_model.parameters()]
    x, y = _data()
    for i in range(0, len(x), 16):
        xb, yb = x[i:i + 16], y[i:i + 16]
        method.observe(xb, yb, torch.zeros(16))
        ref_model.zero_grad()
        nn.functional.cross_entropy(ref_model(xb), yb).backward()
        with torch.no_grad():
            for state, p in zip(states, ref_model.parameters()):
                _reference_step(kind, state, p, p.grad, lr, lam, bw, bi)
    moved = False
    for p, q, q0 in zip(model.parameters(), ref_model.parameters(), _model().parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
        moved |= not torch.allclose(p, q0)
    assert moved
    # The pull mattered: without it the weights differ.
    plain = _model()
    opt = torch.optim.SGD(plain.parameters(), lr=lr)
    for i in range(0, len(x), 16):
        opt.zero_grad()
        nn.functional.cross_entropy(plain(x[i:i + 16]), y[i:i + 16]).backward()
        opt.step()
    assert not all(torch.allclose(p, q, atol=1e-5)
                   for p, q in zip(model.parameters(), plain.parameters()))


# -- MESU --

def _reference_mesu(mu, sigma, g, ge, lr, lr_sigma, sigma_prior, mu_prior, N, clamp_grad):
    """kellian-cottart/mesu-pmnist optimizers/mesu.py update_mesu, one tensor."""
    if clamp_grad > 0:
        g = g.clamp(-clamp_grad / sigma, clamp_grad / sigma)
        ge = ge.clamp(-clamp_grad / sigma, clamp_grad / sigma)
    variance = sigma ** 2
    prior_mu = variance * (mu_prior - mu) / (N * sigma_prior ** 2)
    prior_sigma = sigma * (sigma_prior ** 2 - variance) / (N * sigma_prior ** 2)
    return (mu + lr * (-variance * g + prior_mu),
            sigma + lr_sigma * 0.5 * (-variance * ge + prior_sigma))


@pytest.mark.parametrize("N, clamp_grad", [(50.0, 0.0), (50.0, 0.3), (math.inf, 0.0)])
def test_mesu_update_matches_the_reference_code(N, clamp_grad):
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (3,)]
    mu = [torch.randn(s, generator=gen) for s in shapes]
    sigma = [0.05 + torch.rand(s, generator=gen) for s in shapes]
    g = [torch.randn(s, generator=gen) * 3 for s in shapes]
    ge = [torch.randn(s, generator=gen) * 3 for s in shapes]
    kw = dict(lr=0.7, lr_sigma=0.9, sigma_prior=0.2, mu_prior=0.1, N=N, clamp_grad=clamp_grad)
    expected = [_reference_mesu(*args, **kw) for args in zip(mu, sigma, g, ge)]
    g_before = [t.clone() for t in g]
    _mesu_update(mu, sigma, g, ge, **kw)
    for (m, s), m_new, s_new in zip(expected, mu, sigma):
        torch.testing.assert_close(m_new, m)
        torch.testing.assert_close(s_new, s)
    for a, b in zip(g, g_before):
        assert torch.equal(a, b)                       # gradients untouched


def _quadratic_run(h, steps, start=3.0, cls=MESU, **options):
    torch.manual_seed(0)
    w = nn.Parameter(torch.full((2000,), start))
    opt = cls([w], **options)

    def closure():
        opt.zero_grad()
        loss = 0.5 * h * (w - 3.0).square().sum()
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return w, opt.state[w]


@pytest.mark.parametrize("cls, options", [(MESU, {"N": math.inf}), (BGD, {})])
def test_sigma_shrinks_with_evidence_as_bayes_says(cls, options):
    h, steps, s0 = 4.0, 200, 0.2
    w, state = _quadratic_run(h, steps, cls=cls, sigma_init=s0, **options)
    # Gaussian evidence of precision h per step: 1/sigma^2 grows by about h per step.
    precision = 1 / state["sigma"].square().mean().item()
    assert precision == pytest.approx(1 / s0 ** 2 + h * steps, rel=0.15)
    assert torch.equal(w, state["mu"])                 # between steps the weights are the mean
    # From a prior mean of 0, the mean reaches the posterior mean of Gaussian evidence at 3:
    # 3 * (h t) / (1 / s0^2 + h t), with steps of lr * sigma^2.
    s0 = 0.1
    w, _ = _quadratic_run(h, steps, start=0.0, cls=cls, sigma_init=s0, mc_samples=16, **options)
    assert torch.isfinite(w).all()
    posterior = 3.0 * h * steps / (1 / s0 ** 2 + h * steps)
    assert w.mean().item() == pytest.approx(posterior, rel=0.1)   # first-order steps


def test_mesu_forgets_toward_the_prior_within_its_window():
    # No evidence (a flat loss): sigma relaxes from sigma_init to sigma_prior in ~N steps.
    _, short = _quadratic_run(0.0, 300, sigma_init=0.05, sigma_prior=0.2, N=30.0)
    _, long = _quadratic_run(0.0, 300, sigma_init=0.05, sigma_prior=0.2, N=1e6)
    assert short["sigma"].mean().item() == pytest.approx(0.2, rel=0.05)
    assert long["sigma"].mean().item() == pytest.approx(0.05, rel=0.01)


def _reference_bgd(mu, sigma, g, ge, lr):
    """igolan/bgd optimizers_lib/bgd_optimizer.py step, one tensor."""
    mu = mu + -sigma.pow(2).mul(g).mul(lr)
    sqrt_term = torch.sqrt(ge.mul(sigma).div(2).pow(2).add(1)).mul(sigma)
    return mu, sqrt_term.add(-ge.mul(sigma.pow(2)).div(2))


def test_bgd_update_matches_the_reference_code_and_keeps_sigma_positive():
    gen = torch.Generator().manual_seed(0)
    mu = [torch.randn(4, 3, generator=gen)]
    sigma = [0.05 + torch.rand(4, 3, generator=gen)]
    g = [torch.randn(4, 3, generator=gen) * 3]
    ge = [torch.randn(4, 3, generator=gen) * 30]          # large: MESU's first order would flip
    expected = _reference_bgd(mu[0], sigma[0], g[0], ge[0], 0.7)
    g_before = g[0].clone()
    opt = BGD([nn.Parameter(torch.zeros(1))], lr=0.7)
    opt._update(opt.param_groups[0], mu, sigma, g, ge)
    torch.testing.assert_close(mu[0], expected[0])
    torch.testing.assert_close(sigma[0], expected[1])
    assert (sigma[0] > 0).all() and torch.equal(g[0], g_before)


@pytest.mark.parametrize("cls", [MESU, BGD])
def test_needs_a_closure(cls):
    opt = cls([nn.Parameter(torch.zeros(3))])
    with pytest.raises(TypeError, match=f"{cls.__name__}.step needs a closure"):
        opt.step()


# -- options and state --

@pytest.mark.parametrize("name, options, error, match", [
    ("stream-ewc", {"lam": -1.0}, ValueError, "lam must be in"),
    ("stream-mas", {"beta_weight": 1.0}, ValueError, "beta_weight must be in"),
    ("stream-ewc-adam", {"beta_importance": -0.1}, ValueError, "beta_importance must be in"),
    ("stream-si", {"xi": 0.0}, ValueError, "xi must be in"),
    ("stream-si", {"lam": "big"}, TypeError, "lam must be a real number"),
    ("mesu", {"lr": -1.0}, ValueError, "lr must be in"),
    ("mesu", {"sigma_init": 0.0}, ValueError, "sigma_init must be in"),
    ("mesu", {"sigma_prior": 0.0}, ValueError, "sigma_prior must be in"),
    ("mesu", {"N": 0.0}, ValueError, "N must be in"),
    ("mesu", {"mc_samples": 0}, ValueError, "mc_samples must be >= 1"),
    ("mesu", {"mc_samples": 1.5}, TypeError, "mc_samples must be an int"),
    ("mesu", {"clamp_grad": -1.0}, ValueError, "clamp_grad must be in"),
    ("bgd", {"sigma_init": -0.1}, ValueError, "sigma_init must be in"),
    ("bgd", {"mc_samples": 0}, ValueError, "mc_samples must be >= 1"),
    ("bgd", {"lr": float("nan")}, ValueError, "lr must not be NaN"),
])
def test_options_are_validated(name, options, error, match):
    with pytest.raises(error, match=match):
        _method(name, _model(), **options)


def test_unknown_option_is_rejected():
    with pytest.raises(ValueError, match="unknown option 'lamda'"):
        METHODS["stream-ewc"].with_options({"lamda": 1.0}, OPTIMIZERS["sgd"])


@pytest.mark.parametrize("name, bytes_per_param", [
    ("stream-ewc", 8), ("stream-mas", 8), ("stream-si", 16),                # anchor + importance
    ("stream-ewc-adam", 16), ("stream-mas-adam", 16), ("stream-si-adam", 24),  # + Adam's 8
    ("mesu", 8), ("bgd", 8),                                                 # mu + sigma
])
def test_state_bytes_match_the_docstrings(tiny, name, bytes_per_param):
    cfg = dataclasses.replace(tiny, methods=(name,))
    cell = run_cell(cfg, "stream-label-permuted", name, 0)    # a stream: no task boundaries
    m = cell["metrics"]
    assert m["state_bytes_per_param"] == pytest.approx(bytes_per_param, abs=0.1)
    assert cell["steps"] > 0
