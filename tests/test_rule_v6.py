"""Rule ``v6`` (swgl.rules.synaptic): v5's detector and pull with SI's path-integral
importance, normalised by its mean, and no damping by default. That it is the base optimizer
until a shift, that a shift consolidates SI's importance by its formula, that the path follows
``-g dw``, its variants against each other, its guard, and its checkpoints."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from swgl import DEFAULT_RULE, RULES, SWGL
from swgl.kernels import compiled
from swgl.rules import Context, Hyper
from swgl.rules import synaptic as v6
from toy import resume_across_a_shift, step_across_a_shift_without_host_sync
from toy import shift_stream as _stream
from toy import train_across_a_shift as _train

IMPLS = ["single", "foreach"] + (["fused"] if compiled.available() else [])
HP = Hyper(alpha=0.999, lambda_reg=0.0, eps=1e-8, max_boost=10.0, mode="update",
           consolidation=v6.STRENGTH)


def _cat(opt, model, name):
    return torch.cat([opt.state[p][name].flatten() for p in model.parameters()])


def test_v6_is_the_default_with_its_measured_defaults():
    from swgl.options import DEFAULTS, check_options, hyper

    assert DEFAULT_RULE == "v6"
    opt = SWGL([torch.zeros(3, requires_grad=True)])
    group = opt.param_groups[0]
    assert (group["rule"], group["alpha"], group["lambda_reg"], group["mode"],
            group["consolidation"], group["consolidation_horizon"]) == (
        "v6", 0.999, 0.0, "update", v6.STRENGTH, 0.0)
    group = dict(DEFAULTS, rule="v6")
    check_options(group, math_only=True)
    hp = hyper(group)
    assert (hp.lambda_reg, hp.consolidation, hp.consolidation_horizon) == (0.0, v6.STRENGTH, 0.0)


def test_v6_is_the_base_optimizer_until_the_first_shift():
    plain, _ = _train(None, n_steps=100, shift_at=10**9)
    got, opt = _train("v6", n_steps=100, shift_at=10**9)
    for a, b in zip(plain.parameters(), got.parameters()):
        assert torch.equal(a, b)
    assert float(opt.state[got.weight]["detector"][3]) == 0.0
    assert float(_cat(opt, got, "path").abs().sum()) > 0.0       # the path is still summed


def test_the_path_is_minus_g_times_the_step():
    w = nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = SWGL.wrap(torch.optim.SGD([w], lr=0.1), rule="v6")
    g = torch.tensor([0.3, -1.0, 2.0])
    w.grad = g.clone()
    opt.step()                                  # SGD: dw = -0.1 g, so path = 0.1 g^2
    torch.testing.assert_close(opt.state[w]["path"], 0.1 * g * g)


@pytest.mark.parametrize("variant", ["single", "foreach"])
def test_a_shift_consolidates_sis_importance_by_its_formula(variant):
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(5, 3, generator=gen), torch.randn(7, generator=gen)]
    path = [torch.randn(5, 3, generator=gen), torch.randn(7, generator=gen)]
    mu = [p + 0.3 * torch.randn(p.shape, generator=gen) for p in params]
    F0 = [torch.rand(p.shape, generator=gen) for p in params]
    state = {"consolidated": [f.clone() for f in F0], "anchor": [m.clone() for m in mu],
             "path": [q.clone() for q in path]}
    kept0 = copy.deepcopy(state)
    v6._consolidate(params, state, torch.tensor(True), variant, Context())
    om = [(q / ((p - m) ** 2 + v6.XI)).clamp(min=0) for q, p, m in zip(path, params, mu)]
    mean = torch.cat([o.flatten() for o in om]).mean()
    for f0, o, f, p, m, q in zip(F0, om, state["consolidated"], params, state["anchor"],
                                 state["path"]):
        torch.testing.assert_close(f, f0 + o / mean)
        assert torch.equal(m, p) and not q.any()
    # as two shards of the same group: the mean is the whole group's
    everyone = torch.stack([o.sum() for o in om]).sum().reshape(1)    # the all-reduce's sum
    for i in (0, 1):
        shard = {name: [copy.deepcopy(kept0[name][i])] for name in kept0}
        v6._consolidate([params[i]], shard, torch.tensor(True), variant,
                        Context(reduce_sum=lambda _: everyone, numels=(15 + 7,)))
        for name in shard:
            torch.testing.assert_close(shard[name][0], state[name][i])
    # no shift: nothing moves
    kept = copy.deepcopy(state)
    v6._consolidate(params, state, torch.tensor(False), variant, Context())
    for name in state:
        for a, b in zip(state[name], kept[name]):
            assert torch.equal(a, b)


def test_a_shift_is_found_and_the_pull_holds_the_old_weights():
    plain, _ = _train(None)
    got, opt = _train("v6")
    assert 120 < float(opt.state[got.weight]["detector"][3]) <= 130   # no boundary given
    # one consolidation adds a term of mean 1 over the group (weight and bias)
    assert float(_cat(opt, got, "consolidated").mean()) == pytest.approx(1.0, rel=1e-4)
    anchor = opt.state[got.weight]["anchor"]
    assert (got.weight - anchor).norm() < (plain.weight - anchor).norm()


def test_shifts_reports_each_groups_detector():
    _, opt = _train("v6", n_steps=100, shift_at=10**9)       # stationary: no shift yet
    assert opt.shifts() == [{"steps": 100, "last_shift": 0}]
    got, opt = _train("v6")
    last = int(opt.state[got.weight]["detector"][3])
    assert 120 < last <= 130 and opt.shifts() == [{"steps": 240, "last_shift": last}]
    # a group without a detector (v4), and one with no state yet, report None
    model = nn.Linear(8, 4)
    assert SWGL.wrap(torch.optim.SGD(model.parameters(), lr=0.1)).shifts() == [None]
    opt = SWGL.wrap(torch.optim.SGD(model.parameters(), lr=0.1), rule="v4")
    F.mse_loss(model(torch.randn(2, 8)), torch.zeros(2, 4)).backward()
    opt.step()
    assert opt.shifts() == [None]


def test_swgl_optim_reports_the_same_shifts():
    import swgl.optim

    torch.manual_seed(0)
    model = nn.Linear(8, 4)
    opt = swgl.optim.SGD(model.parameters(), lr=0.05, fused=False)
    for x, y in _stream(240, 120):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    _, wrapped = _train("v6")
    assert opt.shifts() == wrapped.shifts() and opt.shifts()[0]["last_shift"] > 0


@pytest.mark.parametrize("lambda_reg", [None, 3.0])
@pytest.mark.parametrize("impl", IMPLS[1:])
@pytest.mark.parametrize("rule", ["v6", "v7"])   # v7: v6 with another gain at a shift
def test_variants_agree(rule, impl, lambda_reg):
    ref, opt_ref = _train(rule, impl="single", lambda_reg=lambda_reg)
    got, opt_got = _train(rule, impl=impl, lambda_reg=lambda_reg)
    assert opt_ref.shifts()[0]["last_shift"] > 0
    for a, b in zip(ref.parameters(), got.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for p_ref, p_got in zip(ref.parameters(), got.parameters()):
        for name, _ in RULES[rule].state:
            torch.testing.assert_close(opt_ref.state[p_ref][name], opt_got.state[p_got][name],
                                       rtol=1e-4, atol=1e-6)


def test_damping_is_v4s_when_asked_for():
    """``lambda_reg`` > 0 damps the steps (v4's), and the path still sees the whole step."""
    off, _ = _train("v6", n_steps=60, shift_at=10**9)
    on, opt = _train("v6", n_steps=60, shift_at=10**9, lambda_reg=3.0)
    assert not torch.equal(off.weight, on.weight)
    v4, _ = _train("v4", n_steps=60, shift_at=10**9, lambda_reg=3.0)
    torch.testing.assert_close(on.weight, v4.weight)      # no shift yet: v4's steps


def test_a_flagged_step_leaves_the_state_as_it_was():
    p = [torch.zeros(4)]
    state = {"stability": [torch.ones(4)], "consolidated": [torch.zeros(4)],
             "anchor": [torch.zeros(4)], "path": [torch.ones(4)],
             "detector": [torch.tensor([100.0, 1.0, 1.0, 0.0])]}
    before = copy.deepcopy(state)
    grads = [torch.full((4,), 100.0)]                 # would fire: a 10^4 jump
    RULES["v6"].before.foreach(p, grads, state, [torch.ones(())], HP,
                               Context(found=torch.ones(1)))
    for name in state:
        assert torch.equal(state[name][0], before[name][0]), name


def test_a_checkpoint_resumes_bit_exactly_after_a_shift():
    full, model, resumed = resume_across_a_shift("v6")
    assert resumed.shifts()[0]["last_shift"] > 0
    for a, b in zip(full.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_a_checkpoint_with_a_negative_path_loads():
    """SI's path integral ``-sum g dw`` has no sign: an element whose moves raised the loss
    (weight decay, momentum, a pull against its gradient) holds a negative one, as the
    wrapper's fused-path test met with random grads. A checkpoint holding one must load (it
    was refused as a negative importance)."""
    model, opt = _train("v6", n_steps=20)
    saved = copy.deepcopy(opt.state_dict())
    for entry in saved["state"].values():
        entry["swgl_path"][0] = -1.5
    resumed = SWGL.wrap(torch.optim.SGD(model.parameters(), lr=0.05), rule="v6")
    resumed.load_state_dict(saved)
    assert float(resumed.state[model.weight]["path"].flatten()[0]) == -1.5
    with pytest.raises(ValueError, match="consolidated for param 0 holds negative values"):
        saved["state"][0]["swgl_consolidated"][0] = -1.0     # an importance still may not
        resumed.load_state_dict(saved)


@pytest.mark.parametrize("hostile", [1e30, 1e-30, 0.0])
def test_huge_and_tiny_grads_keep_the_state_finite(hostile):
    g = torch.Generator().manual_seed(1)
    w = nn.Parameter(torch.randn(16, 8, generator=g))
    opt = SWGL.wrap(torch.optim.SGD([w], lr=1e-3), rule="v6")
    for t, scale in enumerate([1.0] * 80 + [50.0] * 40):   # a shift at step 80
        grad = scale * torch.randn(16, 8, generator=g)
        if t % 7 == 3:
            grad[0, 0] = hostile
        w.grad = grad
        opt.step()
        assert torch.isfinite(w).all()
        assert all(torch.isfinite(v).all() for v in opt.state[w].values())
    if hostile != 1e30:   # (outliers capped at R_MAX every 7 steps swamp the detector)
        assert float(opt.state[w]["detector"][3]) > 80


def test_grad_mode_is_rejected_for_v6():
    with pytest.raises(ValueError, match="mode"):
        SWGL([torch.zeros(3, requires_grad=True)], rule="v6", mode="grad")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: host syncs exist only "
                    "between a host and a device")
def test_v6_step_has_no_host_sync_on_cuda():
    opt = step_across_a_shift_without_host_sync("v6")
    assert float(opt.state[opt.param_groups[0]["params"][0]]["detector"][3]) > 0
