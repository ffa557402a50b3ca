"""Issue 4's options: signal, update mode, damping floor, shock-aware EMA, task boundaries."""

import pytest
import torch

from rulecall import after, before
from swgl import SWGL
from swgl.rules import Context, Hyper
from toy import toy_batches as _batches
from toy import toy_loss as _loss
from toy import toy_model as _model


@pytest.mark.parametrize("signal", ["relative", "utility", "fisher"])
def test_each_signal_tracks_its_quantity(signal):
    w = torch.tensor([[2.0, -0.5, 1.0]])
    g = torch.tensor([[0.1, 0.2, -0.4]])
    hp = Hyper(alpha=0.0, lambda_reg=0.0, eps=1e-8, max_boost=10.0, signal=signal)
    s, step = [torch.zeros_like(w)], [torch.ones(())]
    before("v2", "single", [w], [g.clone()], s, step, hp, Context())
    delta = 1e-8 + 1e-3 * w.square().mean().sqrt()
    expected = {
        "relative": g.abs() / (w.abs() + delta),
        "utility": (g * w).abs(),
        "fisher": g.square(),
    }[signal]
    torch.testing.assert_close(s[0], expected)


def test_max_damping_sets_the_floor_independently():
    gen = torch.Generator().manual_seed(0)
    w, g = torch.randn(50, generator=gen), torch.randn(50, generator=gen)
    hp = Hyper(alpha=0.0, lambda_reg=0.0, eps=1e-8, max_boost=1.0, max_damping=4.0)
    out = g.clone()
    before("v2", "foreach", [w], [out], [torch.zeros(50)], [torch.ones(())], hp, Context())
    ratio = out / g
    assert ratio.max() <= 1.0 + 1e-6  # damping only
    assert ratio.min() >= 0.25 - 1e-6 and ratio.min() < 0.5


@pytest.mark.parametrize("impl", ["single", "foreach"])
def test_update_mode_leaves_grads_and_scales_the_step_by_the_grad_modes_factor(impl):
    gen = torch.Generator().manual_seed(1)
    w, g = torch.randn(5, 4, generator=gen), torch.randn(5, 4, generator=gen)
    hp = dict(alpha=0.9, lambda_reg=0.0, eps=1e-8, max_boost=10.0)
    grad_out, update_out = g.clone(), g.clone()
    before("v2", impl, [w], [grad_out], [torch.zeros(5, 4)], [torch.ones(())], Hyper(**hp))
    s = [torch.zeros(5, 4)]
    aux = before("v2", impl, [w], [update_out], s, [torch.ones(())],
                 Hyper(**hp, mode="update"))
    assert torch.equal(update_out, g)
    moved = [w + g]  # a base step of +g
    after("v2", impl, moved, [w.clone()], s, [torch.ones(())], aux, Hyper(**hp, mode="update"))
    torch.testing.assert_close(moved[0] - w, grad_out)


@pytest.mark.parametrize("wrapper", [False, True])
def test_update_mode_scales_the_base_optimizers_step(wrapper):
    """With AdamW, mode='update' multiplies each element's Adam step by its factor."""
    model, ref = _model(), _model()
    batch = _batches(1)[0]
    base = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    ref_base = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.0)
    # v4 (v5 before any shift: test_rule_v5) has both modes
    opts = dict(rule="v4", mode="update", lambda_reg=0.0, alpha=0.5)
    ref_swgl = SWGL(ref.parameters(), **{**opts, "mode": "grad"})  # to read the factors
    before = [p.detach().clone() for p in model.parameters()]
    if wrapper:
        opt = SWGL.wrap(base, **opts)
        opt.zero_grad()
        _loss(model, batch).backward()
        opt.step()
    else:
        swgl = SWGL(model.parameters(), **opts)
        base.zero_grad()
        _loss(model, batch).backward()
        swgl.step()
        base.step()
    # Reference: plain AdamW step, then the factors v2 computes from the same grads.
    _loss(ref, batch).backward()
    raw = [p.grad.clone() for p in ref.parameters()]
    ref_swgl.step()
    factors = [p.grad / g for p, g in zip(ref.parameters(), raw)]
    for p, g in zip(ref.parameters(), raw):
        p.grad = g
    ref_base.step()
    for p, r, b, c in zip(model.parameters(), ref.parameters(), before, factors):
        torch.testing.assert_close(p - b, c * (r - b), rtol=1e-4, atol=1e-7)


def test_update_mode_needs_rule_v2():
    with pytest.raises(ValueError, match="mode='update' is not a mode of rule 'v1'"):
        SWGL(_model().parameters(), rule="v1", mode="update")


def test_grad_mode_under_the_default_names_the_rules_that_have_it():
    with pytest.raises(ValueError, match=r"mode='grad' is not a mode of rule 'v6' \(it runs in "
                                         r"\['update'\]\); rules with mode 'grad': \[.*'v4'\]"):
        SWGL(_model().parameters(), mode="grad")


@pytest.mark.parametrize("bad, error, message", [
    (dict(signal="hessian"), ValueError, r"signal must be one of"),
    (dict(mode="param"), ValueError, r"mode must be one of \['grad', 'update'\]"),
    (dict(max_damping=0.5), ValueError, r"max_damping must be in \[1.0, inf\]"),
    (dict(shock=0.5), ValueError, r"shock must be 0 \(off\) or > 1, got 0.5"),
    (dict(shock=-1.0), ValueError, r"shock must be in"),
])
def test_bad_new_options(bad, error, message):
    with pytest.raises(error, match=message):
        SWGL(_model().parameters(), rule="v2", **bad)   # v2 reads every one of them


def test_shock_restarts_the_ema_of_a_tensor_whose_signal_jumps():
    w = torch.ones(10)
    hp = Hyper(alpha=0.99, lambda_reg=0.0, eps=1e-8, max_boost=10.0, shock=5.0)
    s, step = [torch.zeros(10)], [torch.zeros(())]
    for _ in range(50):
        step[0].add_(1)
        before("v2", "foreach", [w], [torch.full((10,), 0.01)], s, step, hp, Context())
    assert int(step[0]) == 50
    step[0].add_(1)
    before("v2", "foreach", [w], [torch.full((10,), 1.0)], s, step, hp, Context())
    # restarted: the bias-corrected EMA is the new signal, not a 1% blend
    assert int(step[0]) == 1
    torch.testing.assert_close(s[0] / (1 - 0.99), torch.full((10,), 1.0 / (1 + 1e-3)), rtol=1e-3,
                               atol=0)


def test_on_task_boundary_resets_swgl_state_only():
    """Under a rule without a shift detector (v1 to v4) the state restarts."""
    model = _model()
    base = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt = SWGL.wrap(base, rule="v4")
    _loss(model, _batches(1)[0]).backward()
    opt.step()
    adam = base.state[model[0].weight]["exp_avg"].clone()
    opt.on_task_boundary()
    assert float(opt.state[model[0].weight]["step"]) == 0
    assert torch.equal(opt.state[model[0].weight]["stability"], torch.zeros(8, 6))
    assert torch.equal(base.state[model[0].weight]["exp_avg"], adam)


# -- issue 13: options that mean something ------------------------------------------------------


def _trained(**options):
    model = _model()
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    swgl = SWGL(model.parameters(), **options)
    for batch in _batches(4):
        base.zero_grad()
        _loss(model, batch).backward()
        swgl.step()
        base.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# under v3 lambda_reg and eps changed nothing (issue 13). Under the default v6, lambda_reg > 0
# turns v4's damping on (the seed's quick start passes 0.01), and alpha, eps and max_boost
# shape that damping
def test_lambda_reg_turns_the_default_rules_damping_on():
    assert not torch.equal(_trained(), _trained(lambda_reg=0.5))


@pytest.mark.parametrize("option, value", [("alpha", 0.5), ("max_boost", 2.0), ("eps", 0.1)])
def test_a_seed_option_changes_the_default_rules_damped_training(option, value):
    assert not torch.equal(_trained(lambda_reg=0.5), _trained(lambda_reg=0.5, **{option: value}))


def test_alpha_sets_the_ema_the_default_rule_reports_without_damping():
    def ema(**options):
        model = _model()
        swgl = SWGL(model.parameters(), **options)
        for batch in _batches(4):
            model.zero_grad()
            _loss(model, batch).backward()
            swgl.step()
        return torch.cat([swgl.state[p]["stability"].flatten() for p in model.parameters()])

    assert not torch.equal(ema(), ema(alpha=0.5))


def test_the_seed_quick_start_runs_without_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _trained(alpha=0.99, lambda_reg=0.01, max_boost=10.0)


@pytest.mark.parametrize("option, value", [("signal", "fisher"), ("max_damping", 2.0),
                                           ("shock", 2.0)])
@pytest.mark.parametrize("rule", ["v1", "v1-paper"])
def test_an_option_the_rule_ignores_is_rejected(rule, option, value):
    with pytest.raises(ValueError, match=f"{option}=.* means nothing to rule '{rule}'"):
        SWGL(_model().parameters(), rule=rule, **{option: value})


def test_shock_is_deprecated():
    import warnings

    with pytest.warns(DeprecationWarning, match="shock is deprecated"):
        SWGL(_model().parameters(), rule="v3", shock=3.0)
    # once per constructor (the defaults' check and the group's both warned), and a group's
    # own value named by its group
    for build in (lambda params, **kw: SWGL(params, **kw),
                  lambda params, **kw: SWGL.wrap(torch.optim.SGD(params, lr=0.1), **kw)):
        model = _model()
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            build(model.parameters(), rule="v3", shock=3.0)
        assert len(seen) == 1 and "shock is deprecated" in str(seen[0].message)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        SWGL([{"params": _model()[0].parameters(), "shock": 2.0}], rule="v3")
    assert len(seen) == 1 and "param_groups[0]['shock'] is deprecated" in str(seen[0].message)


@pytest.mark.parametrize("options, error, message", [
    (dict(alpha=float("nan")), ValueError, "alpha must not be NaN"),
    (dict(alpha=2.0), ValueError, "alpha"),
    (dict(max_boost=-1.0), ValueError, "max_boost"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(mode="grad"), ValueError, "mode='grad' is not a mode of rule 'v6'"),
    (dict(signal="fisher"), ValueError, "signal='fisher' means nothing to rule 'v6'"),
    (dict(alpha="0.9"), TypeError, "alpha must be a real number"),
])
def test_the_functional_api_checks_its_options(options, error, message):
    """``swgl.swgl`` took a NaN alpha (state and grads NaN), alpha 2, a negative max_boost,
    and under the default rule its old default ``mode="grad"`` failed with a bare KeyError."""
    import swgl

    p = [torch.randn(3)]
    kw = {**dict(rule="v6", alpha=0.99, lambda_reg=0.0, eps=1e-8, max_boost=10.0), **options}
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        swgl.swgl(p, [torch.randn(3)], [torch.zeros(3)], [torch.zeros(())], **kw)


def test_the_functional_api_names_the_state_a_rule_needs():
    import swgl

    p, s = [torch.randn(3)], [torch.zeros(3)]
    with pytest.raises(ValueError, match=r"rule 'v6' keeps the state \[.*'detector'.*extra_state"):
        swgl.swgl(p, [torch.randn(3)], s, [torch.zeros(())], rule="v6", alpha=0.99,
                  lambda_reg=0.0, eps=1e-8, max_boost=10.0)
    # with its state and the rule's own mode (unset), the call runs
    extra = {"consolidated": [torch.zeros(3)], "anchor": [p[0].clone()],
             "detector": [torch.zeros(4)], "path": [torch.zeros(3)]}
    out = swgl.swgl(p, [torch.randn(3)], s, [torch.zeros(())], rule="v6", alpha=0.99,
                    lambda_reg=0.0, eps=1e-8, max_boost=10.0, extra_state=extra)
    assert out.applied and float(s[0].sum()) > 0
