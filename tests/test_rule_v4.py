"""The rule ``v4`` (swgl.rules.importance, the default before v5 and v6): its math on hand-made
cases, its three variants against each other, what each option does; and issue 12's do no
harm on a single task, for the default rule (v6). The margin over the tuned plain optimizer on
a small permuted case is in ``test_beats_tuned_lr.py``."""

import copy
import importlib.util
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from swgl import RULES, SWGL
from swgl.functional import swgl as swgl_fn
from swgl.kernels import compiled
from swgl.rules import Context, Hyper
from swgl.rules.importance import factor, progress_ratio

V4 = RULES["v4"]
HP = dict(alpha=0.9, lambda_reg=3.0, eps=1e-8, max_boost=10.0)
TRITON = importlib.util.find_spec("triton") is not None and (
    torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# fused: Triton on CUDA (or its interpreter), else the CPU's compiled functions
FUSED = TRITON or (DEVICE == "cpu" and compiled.available())
IMPLS = ["single", "foreach"] + (["fused"] if FUSED else [])


def test_v4_options_take_its_measured_defaults():
    opt = SWGL([torch.zeros(3, requires_grad=True)], rule="v4")
    group = opt.param_groups[0]
    assert (group["rule"], group["alpha"], group["lambda_reg"], group["mode"]) == (
        "v4", 0.999, 3.0, "update")


def test_grad_mode_by_hand():
    # one step from s = 0: s = (1 - alpha) g^2 = 0.1 g^2, m = mean(s) over both tensors
    p = [torch.zeros(2), torch.zeros(2)]
    g = [torch.tensor([1.0, 0.0]), torch.tensor([2.0, 1.0])]
    s = [torch.zeros(2), torch.zeros(2)]
    hp = Hyper(**HP, mode="grad")
    V4.before.single(p, g, {"stability": s}, [torch.ones(())] * 2, hp, Context())
    s_ref = [0.1, 0.0, 0.4, 0.1]
    m = sum(s_ref) / 4
    c = [max(1 / (1 + 3.0 * x / (m + 1e-16)), 0.1) for x in s_ref]
    g2 = [1.0, 0.0, 4.0, 1.0]
    rho = min(max(sum(g2) / sum(ci * x for ci, x in zip(c, g2)), 1.0), 10.0)
    expected = [rho * ci * gi for ci, gi in zip(c, [1.0, 0.0, 2.0, 1.0])]
    torch.testing.assert_close(torch.cat(s), torch.tensor(s_ref))
    torch.testing.assert_close(torch.cat(g), torch.tensor(expected))
    # the step keeps the plain step's first-order progress: sum(g . new_g) == sum(g^2)
    assert float(sum(a * b for a, b in zip(expected, [1.0, 0.0, 2.0, 1.0]))) == pytest.approx(6.0)


def test_factor_and_progress_ratio_bounds():
    hp = Hyper(**HP)
    c = factor(torch.tensor([0.0, 1.0, 1e9]), 1.0, hp)
    assert c.tolist() == pytest.approx([1.0, 0.5, 0.1])
    # descent (both sums < 0): the ratio, within [1, max_boost]; otherwise 1
    assert float(progress_ratio(torch.tensor(-4.0), torch.tensor(-2.0), hp)) == 2.0
    assert float(progress_ratio(torch.tensor(-4.0), torch.tensor(-1e-6), hp)) == 10.0
    assert float(progress_ratio(torch.tensor(3.0), torch.tensor(-1.0), hp)) == 1.0


def _problem(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # (260, 256) is large enough for the CPU's compiled functions (compiled.MIN_NUMEL)
    shapes = [(7,), (33, 5), (4097,), (1,), (3, 1, 2), (260, 256)]
    make = lambda: [torch.randn(s, generator=gen).to(DEVICE, dtype) for s in shapes]  # noqa: E731
    params, grads = make(), make()
    stabilities = [torch.rand(s, generator=gen).to(DEVICE) for s in shapes]
    return params, grads, stabilities


def _one_step(impl, mode, dtype, grad_scale=1.0, found=None):
    params, grads, s = _problem(dtype)
    grads = [g * grad_scale for g in grads]
    hp = Hyper(**HP, mode=mode)
    steps = [torch.ones((), device=DEVICE) for _ in params]
    aux = getattr(V4.before, impl)(params, grads, {"stability": s}, steps, hp,
                                   Context(grad_scale=grad_scale, found=found))
    if mode == "update":
        before = [p.clone() for p in params]
        for p, g in zip(params, grads):
            p.sub_(0.1 * g / grad_scale + 0.01)
        getattr(V4.after, impl)(params, before, {"stability": s}, steps, aux, hp, Context())
    return params, grads, s


@pytest.mark.parametrize("impl", IMPLS[1:])
@pytest.mark.parametrize("mode", ["grad", "update"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_variants_agree(impl, mode, dtype):
    ref = _one_step("single", mode, dtype, grad_scale=8.0)
    out = _one_step(impl, mode, dtype, grad_scale=8.0)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    for a, b in zip(sum(ref, []), sum(out, [])):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_flagged_step_changes_nothing(impl):
    params, grads, s = _problem(torch.float32)
    out = _one_step(impl, "grad", torch.float32, found=torch.ones(1, device=DEVICE))
    for a, b in zip(grads + s, out[1] + out[2]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("fused", [False, True] if FUSED else [False])
@pytest.mark.parametrize("where", [5, 0])  # the large tensor (compiled on the CPU), a small one
def test_a_nonfinite_grad_skips_the_call_through_functional(fused, where):
    # with fused=True the variant sets the non-finite flag in its own passes
    params, grads, s = _problem(torch.float32)
    grads[where].view(-1)[-1] = float("nan")
    kept_grads, kept_s = [g.clone() for g in grads], [x.clone() for x in s]
    steps = [torch.zeros((), device=DEVICE) for _ in params]
    out = swgl_fn(params, grads, s, steps, rule="v4", mode="grad", fused=fused, **HP)
    assert not bool(out.applied)
    for a, b in zip(grads + s, kept_grads + kept_s):
        assert torch.equal(a.nan_to_num(), b.nan_to_num())
    assert [float(t) for t in steps] == [0.0] * len(params)
    grads[where].view(-1)[-1] = 0.0
    out = swgl_fn(params, grads, s, steps, rule="v4", mode="grad", fused=fused, **HP)
    assert bool(out.applied) and [float(t) for t in steps] == [1.0] * len(params)
    assert not torch.equal(s[5], kept_s[5])


def test_the_cpu_guard_hands_the_ema_the_squares_it_would_take():
    """On the CPU the foreach variant's guard (``host_guard``) takes the squares its EMA reads:
    the EMA and the detector's sums are bit for bit those of the EMA's own pass."""
    from swgl.rules.importance import R_MAX, host_guard

    hp = Hyper(**HP, mode="update")
    runs = []
    for guarded in (False, True):
        params, grads, s = _problem(torch.float32)
        grads = [g * 8.0 for g in grads]
        checked = host_guard(grads, 8.0) if guarded else None
        sums: list = []
        V4.before.foreach(params, grads, {"stability": s}, [torch.ones(()) for _ in params], hp,
                          Context(grad_scale=8.0, squares=checked, g2_sum=sums))
        runs.append((s, sums[0]))
    assert checked is not None
    assert all(torch.equal(a, b) for a, b in zip(runs[0][0], runs[1][0]))
    assert torch.equal(runs[0][1], runs[1][1])
    # a square above the cap, or a non-finite grad: the guard cannot tell, the caller decides
    _, grads, _ = _problem(torch.float32)
    grads[2][0] = R_MAX ** 0.5 * 2.0
    assert host_guard(grads, 1.0) is None
    grads[2][0] = float("inf")
    assert host_guard(grads, 1.0) is None


def test_a_huge_finite_grad_takes_the_capped_ema_through_functional():
    """A finite grad whose square is above ``R_MAX`` applies on the CPU (the generic guard
    decides) and enters the EMA capped, as the single-tensor reference has it."""
    from swgl.rules.importance import R_MAX

    out = []
    for foreach in (False, True):
        params, grads, s = _problem(torch.float32)
        grads[0][0] = R_MAX ** 0.5 * 4.0
        steps = [torch.zeros(()) for _ in params]
        res = swgl_fn(params, grads, s, steps, rule="v4", mode="update", foreach=foreach,
                      fused=False, **HP)
        assert bool(res.applied) and [float(t) for t in steps] == [1.0] * len(params)
        out.append(s)
    start = float(_problem(torch.float32)[2][0][0])
    capped = HP["alpha"] * start + (1 - HP["alpha"]) * R_MAX
    assert float(out[1][0][0]) == pytest.approx(capped, rel=1e-6)
    for a, b in zip(*out):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=0.0)


@pytest.mark.skipif(not TRITON, reason="needs Triton on CUDA (or TRITON_INTERPRET=1)")
def test_fused_steps_reuse_their_plan_and_rebuild_when_a_tensor_changes(monkeypatch):
    from swgl.kernels import triton_swgl

    built = []
    real = triton_swgl.Launch
    moved = []
    monkeypatch.setattr(triton_swgl, "Launch",
                        lambda lists: built.append(len(lists)) or real(lists))
    monkeypatch.setattr(real, "readdress",
                        lambda self, lists, f=real.readdress: moved.append(1) or f(self, lists))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)).to(DEVICE)
    ref_model = copy.deepcopy(model)
    # v4's plans on the eager path (v5 builds one more; CUDA graphs replay without lookups),
    # its phases: a subclass of SGD keeps the wrapper off its fused SGD step
    class PhasesSGD(torch.optim.SGD):
        pass

    opt = SWGL.wrap(PhasesSGD(model.parameters(), lr=0.1), rule="v4", cuda_graphs=False)
    ref_opt = SWGL.wrap(torch.optim.SGD(ref_model.parameters(), lr=0.1), rule="v4", fused=False)
    x = torch.randn(32, 8, device=DEVICE)

    def step(net, o, grads=None):
        o.zero_grad(set_to_none=False)  # the grads keep their addresses
        net(x).square().mean().backward()
        for p, g in zip(net.parameters(), grads or ()):
            p.grad = g.clone()
        o.step()

    for _ in range(3):
        step(model, opt)
        step(ref_model, ref_opt)
    # one plan per phase, built once: (w, g, s), (w, w0, s, g); only the tables of grads
    # and snapshots are rebuilt when they moved (always on the CPU, which has no caching
    # allocator; rarely on CUDA)
    assert built == [3, 4]
    assert len(moved) <= 2 * 3
    # new grads at new addresses, one non-contiguous: plans built anew, and the result is
    # still the foreach variant's
    grads = [p.grad.clone() for p in model.parameters()]
    grads[0] = grads[0].t().contiguous().t()
    step(model, opt, grads)
    step(ref_model, ref_opt, grads)
    assert len(built) > 2
    for a, b in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _train(options, steps=30):
    """AdamW on a tiny problem, wrapped in SWGL with ``options`` (None: AdamW alone)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    opt = opt if options is None else SWGL.wrap(opt, **{"rule": "v4", **options})
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(64, 8, generator=gen), torch.randint(0, 3, (64,), generator=gen)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_lambda_reg_zero_is_the_base_optimizer():
    torch.testing.assert_close(_train({"lambda_reg": 0.0}), _train(None), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(_train({}), _train(None), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("option, value", [("alpha", 0.9), ("lambda_reg", 10.0),
                                           ("max_boost", 2.0)])
def test_every_seed_option_changes_training(option, value):
    assert not torch.allclose(_train({}), _train({option: value}))


def test_eps_is_a_floor_under_the_gradient_rms():
    # gradients ~1e-11: with eps = 1e-8 the floor dominates the mean (no damping); with a tiny
    # eps the damping acts
    gen = torch.Generator().manual_seed(0)
    p = [torch.zeros(50)]
    g = torch.randn(50, generator=gen) * 1e-11
    g[:5] *= 100.0   # a few elements far more important than the rest
    outs = {}
    for eps in (1e-8, 1e-15):
        hp = Hyper(alpha=0.9, lambda_reg=3.0, eps=eps, max_boost=10.0, mode="grad")
        grads = [g.clone()]
        V4.before.foreach(p, grads, {"stability": [torch.zeros(50)]}, [torch.ones(())], hp,
                          Context())
        outs[eps] = grads[0] / g
    assert torch.allclose(outs[1e-8], torch.ones(50), atol=1e-2)
    assert outs[1e-15][:5].max() < 0.5 * outs[1e-15][5:].min()


def test_the_seed_quick_start_values_are_kept():
    opt = SWGL([torch.zeros(3, requires_grad=True)], alpha=0.99, lambda_reg=0.01, max_boost=10.0)
    group = opt.param_groups[0]
    assert (group["alpha"], group["lambda_reg"], group["max_boost"]) == (0.99, 0.01, 10.0)


@pytest.mark.parametrize("rule, bad", [("v4", {"signal": "fisher"}), ("v4", {"shock": 2.0}),
                                       ("v4", {"max_damping": 5.0})])
def test_options_v4_does_not_read_are_rejected(rule, bad):
    with pytest.raises(ValueError, match="means nothing to rule 'v4'"):
        SWGL([torch.zeros(3, requires_grad=True)], rule=rule, **bad)


# -- the measured claims (issue 12) on the embedded digits data --------------------------------


def _digits():
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32) / 16.0
    return (x - x.mean()) / x.std(), torch.tensor(bunch.target)


def _digits_acc(opt_name, lr, use_swgl, seed, n_tasks, epochs, shifts=None):
    """Mean test accuracy over the tasks; with ``shifts`` (a list), SWGL's ``shifts()`` at the
    end is appended to it."""
    x, y = _digits()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    order = torch.randperm(len(x), generator=gen)
    train, test = order[:1300], order[1300:]
    perms = [torch.arange(64)] + [torch.randperm(64, generator=gen) for _ in range(n_tasks - 1)]
    model = nn.Sequential(nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(),
                          nn.Linear(100, 10))
    base = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[opt_name](model.parameters(), lr=lr)
    opt = SWGL.wrap(base) if use_swgl else base
    for perm in perms:
        for _ in range(epochs):
            shuffled = train[torch.randperm(len(train), generator=gen)]
            for i in range(0, len(shuffled) - 31, 32):
                idx = shuffled[i:i + 32]
                opt.zero_grad()
                F.cross_entropy(model(x[idx][:, perm]), y[idx]).backward()
                opt.step()
    if shifts is not None:
        shifts.append(opt.shifts())
    with torch.no_grad():
        return 100 * np.mean([float((model(x[test][:, p]).argmax(1) == y[test]).float().mean())
                              for p in perms])


@pytest.mark.parametrize("opt_name, lr", [("sgd", 0.1), ("adamw", 1e-3)])
def test_single_task_does_no_harm(opt_name, lr):
    # Five epochs of one task, 200 steps: past the default detector's warm-up (50) and
    # refractory period (50), so a false shift could fire and pull. Measured at 1, 5 and 10
    # epochs (5 seeds, twenty-first session): no shift found, v6 is the base optimizer to the
    # bit (SGD 0.1: 95.6 at 5 epochs, AdamW 1e-3: 96.8). Under v4 (damping, before v6) this
    # gained +2.3 / +1.4 at one epoch (docs/results.md).
    found = []
    plain = np.mean([_digits_acc(opt_name, lr, False, s, 1, 5) for s in range(3)])
    swgl = np.mean([_digits_acc(opt_name, lr, True, s, 1, 5, found) for s in range(3)])
    assert swgl >= plain - 1.0, (plain, swgl)
    # a stationary task: the detector stays silent, so the default changes nothing
    assert all(g["steps"] == 200 and g["last_shift"] == 0 for run in found for g in run), found
