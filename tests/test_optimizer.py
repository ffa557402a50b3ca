"""The optimizer classes: seed API, wrapper mode, argument checks, checkpoints, AMP."""

import copy
import gc
import math
import re
import warnings

import pytest
import torch
import torch.nn as nn

from swgl import DEFAULT_RULE, SWGL, SWGLWrapper, kernels
from swgl.rules import RULES
from toy import step_both
from toy import toy_batches as _batches
from toy import toy_loss as _loss
from toy import toy_model as _model


def _train_two_object(model, base, swgl, batches):
    for batch in batches:
        base.zero_grad()
        _loss(model, batch).backward()
        swgl.step()
        base.step()


def _train_wrapper(model, opt, batches):
    for batch in batches:
        opt.zero_grad()
        _loss(model, batch).backward()
        opt.step()


# -- the seed's API ----------------------------------------------------------------------------


def test_seed_quick_start_runs_verbatim():
    """Seed 000's quick start, copied unchanged apart from the data stream and the loss."""
    import torch
    import torch.nn as nn

    from swgl import SWGL

    # Step 1: Create your model
    model = nn.Sequential(
        nn.Linear(784, 256),
        nn.ReLU(),
        nn.Linear(256, 10)
    )

    # Step 2: Initialize your base optimizer
    base_optimizer = torch.optim.AdamW(model.parameters(), lr=0.001)

    # Step 3: Wrap SWGL around the same parameters
    swgl = SWGL(
        params=model.parameters(),
        alpha=0.99,          # EMA decay
        lambda_reg=0.01,     # Stability penalty
        max_boost=10.0       # Maximum gradient boost
    )

    class Out:
        def __init__(self, loss):
            self.loss = loss

    class Model(nn.Module):  # the seed calls model(x).loss
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, batch):
            x, y = batch
            return Out(nn.functional.cross_entropy(self.net(x), y))

    net = model
    model = Model(net)
    your_data_stream = [((torch.rand(8, 784), torch.randint(0, 10, (8,))), None)] * 3
    before = [p.detach().clone() for p in net.parameters()]

    # Step 4: Training loop
    for batch_data, batch_labels in your_data_stream:  # noqa: B007 (verbatim seed code)
        base_optimizer.zero_grad()

        loss = model(batch_data).loss
        loss.backward()

        # Apply gradient modulation BEFORE optimizer step
        swgl.step()
        base_optimizer.step()

    # Monitoring Stability
    means = []
    for group in swgl.param_groups:
        for p in group['params']:
            stability = swgl.state[p]['stability']
            means.append(stability.mean().item())
    assert len(means) == 4 and all(math.isfinite(m) and m > 0 for m in means)
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_seed_tuning_presets_are_accepted():
    params = list(_model().parameters())
    SWGL(params, alpha=0.995, lambda_reg=0.005, max_boost=5.0)
    SWGL(params, alpha=0.95, lambda_reg=0.05, max_boost=20.0)


def test_step_modulates_grads_in_place_and_only_there():
    model = _model()
    # mode "grad" (v4's; the default, "update", leaves grads alone)
    swgl = SWGL(model.parameters(), rule="v4", mode="grad")
    _loss(model, _batches(1)[0]).backward()
    weights = [p.detach().clone() for p in model.parameters()]
    grads = [p.grad.clone() for p in model.parameters()]
    swgl.step()
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters()))
    assert any(not torch.equal(g, p.grad) for g, p in zip(grads, model.parameters()))


def test_options_can_differ_per_group():
    model = _model()
    swgl = SWGL(
        [
            {"params": model[0].parameters(), "alpha": 0.5, "max_boost": 2.0},
            {"params": model[2].parameters(), "rule": "v1"},
        ],
        alpha=0.99,
    )
    assert [g["alpha"] for g in swgl.param_groups] == [0.5, 0.99]
    assert swgl.param_groups[1]["rule"] == "v1"
    _loss(model, _batches(1)[0]).backward()
    swgl.step()
    # v1 starts at 1 and its EMA moves by (1 - alpha) * (r - 1) in one step.
    s = swgl.state[model[2].weight]["stability"]
    assert (s < 1.0).any() and (s > 0.98).all()
    # the default rule's EMA of g^2 starts at 0 and, with alpha=0.5, holds 0.5 g^2 after one
    # step.
    assert swgl.state[model[0].weight]["stability"].min() >= 0
    assert swgl.state[model[0].weight]["stability"].max() > 0


def test_params_without_grad_are_skipped():
    model = _model()
    model[0].bias.requires_grad_(False)
    swgl = SWGL(model.parameters())
    assert model[0].bias not in swgl.state
    _loss(model, _batches(1)[0]).backward()
    swgl.step()
    assert model[0].bias.grad is None
    assert float(swgl.state[model[0].weight]["step"]) == 1


# -- argument checks ---------------------------------------------------------------------------

BAD_OPTIONS = [
    (dict(alpha=1.0), ValueError, r"alpha must be in \[0.0, 1.0\), got 1.0"),
    (dict(alpha=-0.1), ValueError, r"alpha must be in"),
    (dict(alpha=float("nan")), ValueError, r"alpha must not be NaN"),
    (dict(alpha="0.9"), TypeError, r"alpha must be a real number, got '0.9'"),
    (dict(alpha=True), TypeError, r"alpha must be a real number"),
    (dict(eps=0.0), ValueError, r"eps must be in \(0.0, inf\], got 0.0"),
    (dict(eps=-1e-8), ValueError, r"eps must be in"),
    (dict(max_boost=0.5), ValueError, r"max_boost must be in \[1.0, inf\], got 0.5"),
    (dict(max_boost=float("inf")), ValueError, r"max_boost must be finite"),
    (dict(max_boost=None), TypeError, r"max_boost must be a real number, got None"),
    (dict(lambda_reg=-0.01), ValueError, r"lambda_reg must be in \[0.0, inf\]"),
    (dict(rule="v9"), ValueError, r"rule must be one of \[.*'v6', 'v7'\], got 'v9'"),
    (dict(storage="fp64"), ValueError, r"storage must be one of .*got 'fp64'"),
    (dict(foreach=1), TypeError, r"foreach must be a bool, got 1"),
]


@pytest.mark.parametrize("options, error, message", BAD_OPTIONS)
def test_bad_options_raise_naming_the_argument(options, error, message):
    with pytest.raises(error, match=message):
        SWGL(_model().parameters(), **options)


@pytest.mark.parametrize("options, error, message", BAD_OPTIONS)
def test_wrapper_rejects_the_same_options(options, error, message):
    model = _model()
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(error, match="swgl_" + message):
        SWGL.wrap(base, **options)


def test_bad_option_in_a_param_group_is_rejected():
    model = _model()
    # the group named: with several, which one (a user's audit)
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['alpha'\] must be in"):
        SWGL([{"params": model[0].parameters()}, {"params": model[2].parameters(), "alpha": 2.0}])
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['swgl_alpha'\] must be in"):
        SWGLWrapper([{"params": model[0].parameters(), "swgl_alpha": 2.0}],
                    base=torch.optim.SGD, base_kwargs={"lr": 0.1})


def test_unknown_keyword_is_rejected():
    with pytest.raises(TypeError, match="unexpected keyword argument 'lr'"):
        SWGL(_model().parameters(), lr=0.1)


BAD_PARAMS = [
    (lambda: [], ValueError, "empty parameter list"),
    (lambda: [torch.zeros(3, dtype=torch.complex64, requires_grad=True)], TypeError,
     r"params\[0\] is complex"),
    (lambda: [torch.zeros(3, dtype=torch.int64)], TypeError, r"params\[0\] has dtype torch.int64"),
    (lambda: [torch.ones(3, requires_grad=True) * 2], ValueError, "non-leaf"),
]


@pytest.mark.parametrize("make, error, message", BAD_PARAMS)
def test_bad_params_raise(make, error, message):
    with pytest.raises(error, match=message):
        SWGL(make())


def test_param_in_two_groups_is_rejected():
    p = nn.Parameter(torch.ones(3))
    with pytest.raises(ValueError, match="more than one parameter group"):
        SWGL([{"params": [p]}, {"params": [p]}])


def test_sparse_grads_are_rejected_clearly():
    emb = nn.Embedding(10, 4, sparse=True)
    swgl = SWGL(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(TypeError, match="sparse gradients"):
        swgl.step()


def test_wrap_rejects_non_optimizers_and_nesting():
    model = _model()
    with pytest.raises(TypeError, match="base must be a torch.optim.Optimizer instance"):
        SWGL.wrap(model)
    with pytest.raises(TypeError, match="cannot wrap an SWGL optimizer"):
        SWGL.wrap(SWGL(model.parameters()))
    with pytest.raises(TypeError, match="base must be a torch.optim.Optimizer subclass"):
        SWGLWrapper(model.parameters(), base="adamw")


def test_wrap_rejects_a_base_whose_step_needs_a_closure():
    """LBFGS re-evaluates its closure in a line search: the wrapper says so at once rather
    than failing inside the step (where it called ``LBFGS.step()`` without one)."""
    model = _model()
    with pytest.raises(TypeError, match="cannot wrap LBFGS: its step needs a closure"):
        SWGL.wrap(torch.optim.LBFGS(model.parameters()))
    with pytest.raises(TypeError, match="cannot wrap LBFGS"):
        SWGLWrapper(model.parameters(), base=torch.optim.LBFGS, base_kwargs={"lr": 0.1})
    SWGL.wrap(torch.optim.SGD(model.parameters(), lr=0.1))   # closure optional: accepted


# -- wrapper mode ------------------------------------------------------------------------------


@pytest.mark.parametrize("base_cls, kwargs", [
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    (torch.optim.AdamW, dict(lr=1e-2)),
])
def test_wrapper_equals_the_two_object_pattern(base_cls, kwargs):
    """Across a detected shift (the default's pull and SI's path run in the two-object
    pattern's after phase, inside the base's step), weights and every state tensor."""
    from toy import shift_stream

    models = [nn.Linear(8, 4) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    base1 = base_cls(models[0].parameters(), **kwargs)
    swgl = SWGL(models[0].parameters(), alpha=0.9)
    opt = SWGL.wrap(base_cls(models[1].parameters(), **kwargs), alpha=0.9)
    for x, y in shift_stream(200, 120):
        base1.zero_grad()
        nn.functional.mse_loss(models[0](x), y).backward()
        swgl.step()
        base1.step()
        opt.zero_grad()
        nn.functional.mse_loss(models[1](x), y).backward()
        opt.step()
    assert swgl.shifts()[0]["last_shift"] > 120 and swgl.shifts() == opt.shifts()
    exact = opt._stepping is None   # else Triton's interpreter: the same math in another order
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        pairs = [(a, b)] + [(swgl.state[a][k], opt.state[b][k]) for k in swgl.state[a]]
        for x, y in pairs:
            if exact:
                assert torch.equal(x, y)
            else:
                torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)


def test_wrapper_from_class_and_kwargs_equals_wrap():
    batches = _batches(4)
    m1, m2 = _model(), _model()
    opt1 = SWGL.wrap(torch.optim.AdamW(m1.parameters(), lr=1e-2))
    opt2 = SWGLWrapper(m2.parameters(), base=torch.optim.AdamW, base_kwargs={"lr": 1e-2})
    _train_wrapper(m1, opt1, batches)
    _train_wrapper(m2, opt2, batches)
    assert all(torch.equal(a, b) for a, b in zip(m1.parameters(), m2.parameters()))


def test_wrapper_step_runs_the_closure_first():
    model = _model()
    opt = SWGL.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    batch = _batches(1)[0]
    calls = []

    def closure():
        opt.zero_grad()
        loss = _loss(model, batch)
        loss.backward()
        calls.append(loss.item())
        return loss

    before = model[0].weight.detach().clone()
    loss = opt.step(closure)
    assert calls == [loss.item()]
    assert not torch.equal(before, model[0].weight)
    assert float(opt.state[model[0].weight]["step"]) == 1


def test_wrapper_shares_groups_with_schedulers_and_add_param_group():
    model = _model()
    base = torch.optim.SGD(model[0].parameters(), lr=1.0)
    opt = SWGL.wrap(base, alpha=0.9)
    assert opt.param_groups is base.param_groups
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.add_param_group({"params": model[2].parameters(), "swgl_alpha": 0.5})
    assert len(base.param_groups) == 2
    assert base.param_groups[1]["lr"] == 1.0 and base.param_groups[1]["swgl_alpha"] == 0.5
    assert base.param_groups[1]["swgl_rule"] == DEFAULT_RULE
    _loss(model, _batches(1)[0]).backward()
    opt.step()
    sched.step()
    assert base.param_groups[0]["lr"] == 0.5
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_wrapper_keeps_base_options_apart_from_its_own():
    model = _model()
    base = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-6)
    opt = SWGL.wrap(base, eps=1e-8)
    group = opt.param_groups[0]
    assert group["eps"] == 1e-6 and group["swgl_eps"] == 1e-8
    assert group["foreach"] is None and group["swgl_foreach"] is True


def test_wrapper_is_not_an_amp_scaling_optimizer():
    """A fused base supports AMP scaling itself; the wrapper must not claim it, or
    GradScaler would hand it still-scaled grads."""
    model = _model()
    base = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    assert base._step_supports_amp_scaling
    assert not getattr(SWGL.wrap(base), "_step_supports_amp_scaling", False)


def test_step_hooks_fire_on_the_wrapper():
    model = _model()
    opt = SWGL.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    fired = []
    opt.register_step_pre_hook(lambda *a: fired.append("pre"))
    opt.register_step_post_hook(lambda *a: fired.append("post"))
    _loss(model, _batches(1)[0]).backward()
    opt.step()
    assert fired == ["pre", "post"]


# -- checkpoints -------------------------------------------------------------------------------


def _resume_case(mode, tmp_path, n=150, total=200):
    """A run cut at step ``n``, past the shift of :func:`toy.shift_stream` at 120 (so the
    default's importance, anchor, path and detector all hold something), saved, loaded into
    new objects and run to ``total``; and the same run unbroken."""
    from toy import shift_stream

    batches = list(shift_stream(total, 120))
    make_base = lambda model: torch.optim.AdamW(model.parameters(), lr=1e-2)  # noqa: E731

    def build(model):
        base = make_base(model)
        if mode == "wrapper":
            return base, SWGL.wrap(base, alpha=0.9)
        return base, SWGL(model.parameters(), alpha=0.9)

    def train(model, base, swgl, chunk):
        for x, y in chunk:
            (swgl if mode == "wrapper" else base).zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            swgl.step()
            if mode != "wrapper":
                base.step()

    def linear(seed=0):
        torch.manual_seed(seed)
        return nn.Linear(8, 4)

    straight = linear()
    straight_opt = build(straight)
    train(straight, *straight_opt, batches)

    first = linear()
    base, swgl = build(first)
    train(first, base, swgl, batches[:n])
    assert swgl.shifts()[0]["last_shift"] > 0      # the checkpoint holds a consolidation
    ckpt = {"model": first.state_dict(), "swgl": swgl.state_dict(), "base": base.state_dict()}
    torch.save(ckpt, tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)

    resumed = linear(seed=123)
    resumed.load_state_dict(ckpt["model"])
    base, swgl = build(resumed)
    if mode == "wrapper":
        swgl.load_state_dict(ckpt["swgl"])
    else:
        base.load_state_dict(ckpt["base"])
        swgl.load_state_dict(ckpt["swgl"])
    train(resumed, base, swgl, batches[n:])
    return straight, straight_opt[1], resumed, swgl


@pytest.mark.parametrize("mode", ["two-object", "wrapper"])
def test_checkpoint_round_trip_is_bit_exact(mode, tmp_path):
    straight, straight_opt, resumed, opt = _resume_case(mode, tmp_path)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
        assert straight_opt.state[a].keys() == opt.state[b].keys()
        for key, value in straight_opt.state[a].items():
            assert torch.equal(value, opt.state[b][key]), key


def test_wrapper_state_dict_is_one_standard_dict_with_namespaced_keys():
    model = _model()
    opt = SWGL.wrap(torch.optim.AdamW(model.parameters(), lr=1e-3))
    _train_wrapper(model, opt, _batches(1))
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    swgl_keys = {"swgl_" + name for name, _ in RULES[DEFAULT_RULE].state} | {"swgl_step"}
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq"} | swgl_keys
    assert all(isinstance(v, torch.Tensor) for v in sd["state"][0].values())
    assert set(opt.base.state[model[0].weight]) == {"step", "exp_avg", "exp_avg_sq"}


def test_stability_keeps_fp32_when_params_are_bf16():
    """torch's load_state_dict casts state to the param dtype; SWGL's must not be."""
    model = _model().to(torch.bfloat16)
    swgl = SWGL(model.parameters())
    x = torch.randn(4, 6, dtype=torch.bfloat16)
    model(x).sum().backward()
    swgl.step()
    fresh = SWGL(model.parameters())
    fresh.load_state_dict(swgl.state_dict())
    s = fresh.state[model[0].weight]["stability"]
    assert s.dtype == torch.float32
    assert torch.equal(s, swgl.state[model[0].weight]["stability"])


def test_loading_another_models_state_raises():
    model = _model()
    swgl = SWGL(model.parameters())
    model(torch.randn(4, 6)).sum().backward()
    swgl.step()   # state to save: torch saves none before a param's first step
    other = nn.Sequential(nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 3))
    message = re.escape("has shape (8, 6)") + ".*another model"
    with pytest.raises(ValueError, match=message):
        SWGL(other.parameters()).load_state_dict(swgl.state_dict())
    smaller = nn.Linear(6, 3)
    with pytest.raises(ValueError, match="does not match the optimizer's"):
        SWGL(smaller.parameters()).load_state_dict(swgl.state_dict())


@pytest.mark.parametrize("mode", ["two-object", "wrapper"])
def test_a_bad_checkpoint_leaves_state_untouched(mode):
    model = _model()
    base = torch.optim.AdamW(model.parameters(), lr=1e-3)
    if mode == "wrapper":
        swgl = SWGL.wrap(base, alpha=0.9)
        _train_wrapper(model, swgl, _batches(2))
    else:
        swgl = SWGL(model.parameters(), alpha=0.9)
        _train_two_object(model, base, swgl, _batches(2))
    before = {id(p): s["stability"].clone() for p, s in swgl.state.items()}
    adam_before = base.state[model[0].weight]["exp_avg"].clone()
    assert len(before) == 4
    sd = copy.deepcopy(swgl.state_dict())
    key = "stability" if mode == "two-object" else "swgl_stability"
    sd["state"][3][key] = torch.full((3,), float("nan"))
    sd["param_groups"][0]["swgl_alpha" if mode == "wrapper" else "alpha"] = 0.5
    with pytest.raises(ValueError, match="non-finite"):
        swgl.load_state_dict(sd)
    assert len(swgl.state) == 4
    assert all(torch.equal(before[id(p)], s["stability"]) for p, s in swgl.state.items())
    assert swgl.param_groups[0]["swgl_alpha" if mode == "wrapper" else "alpha"] == 0.9
    assert torch.equal(base.state[model[0].weight]["exp_avg"], adam_before)


def test_wrapper_warns_when_the_checkpoint_has_no_swgl_state():
    model = _model()
    base = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _train_wrapper(model, SWGL.wrap(base), _batches(1))
    opt = SWGL.wrap(torch.optim.AdamW(model.parameters(), lr=1e-3))
    with pytest.warns(UserWarning, match="no SWGL state"):
        opt.load_state_dict(base.state_dict())


def test_wrapper_keeps_its_options_after_loading_a_plain_torch_checkpoint():
    """torch's load_state_dict takes the checkpoint's groups, which have no swgl_* options:
    the wrapper's stay, and it steps on (it raised KeyError at the next step)."""
    model = _model()
    base = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _train_wrapper(model, base, _batches(1))
    opt = SWGL.wrap(torch.optim.AdamW(model.parameters(), lr=1e-3), alpha=0.9, rule="v4")
    with pytest.warns(UserWarning, match="no SWGL state"):
        opt.load_state_dict(base.state_dict())
    assert opt.param_groups[0]["swgl_alpha"] == 0.9 and opt.param_groups[0]["swgl_rule"] == "v4"
    _train_wrapper(model, opt, _batches(2))
    assert "stability" in opt.state[next(model.parameters())]


def test_two_object_warns_when_only_the_base_was_resumed():
    """The seed's 'forgot to save it' case: base resumed, SWGL fresh."""
    model = _model()
    base = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _train_two_object(model, base, SWGL(model.parameters()), _batches(2))
    new_base = torch.optim.AdamW(model.parameters(), lr=1e-3)
    new_base.load_state_dict(base.state_dict())
    swgl = SWGL(model.parameters())
    with pytest.warns(UserWarning, match="SWGL starts from fresh stability"):
        _train_two_object(model, new_base, swgl, _batches(1))


def test_no_warning_on_a_fresh_start():
    model = _model()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train_two_object(model, torch.optim.AdamW(model.parameters()), SWGL(model.parameters()),
                          _batches(2))


# -- non-finite grads and AMP ------------------------------------------------------------------


def test_non_finite_grads_leave_state_and_grads_untouched():
    model = _model()
    swgl = SWGL(model.parameters())
    _loss(model, _batches(1)[0]).backward()
    swgl.step()   # a finite step first: every state entry exists
    model[0].weight.grad[0, 0] = float("inf")
    model[2].bias.grad[0] = float("nan")
    grads = [p.grad.clone() for p in model.parameters()]
    state = {id(p): {k: v.clone() for k, v in s.items()} for p, s in swgl.state.items()}
    swgl.step()
    for g, p in zip(grads, model.parameters()):
        assert torch.equal(g, p.grad) or (g.isnan() == p.grad.isnan()).all()
    for p, s in swgl.state.items():
        assert all(torch.equal(state[id(p)][k], v) for k, v in s.items())


def _amp_step(model, base, swgl, scaler, batch, order):
    base.zero_grad()
    scaler.scale(_loss(model, batch)).backward()
    if order == "unscale-first":
        scaler.unscale_(base)
    swgl.step()
    scaler.step(base)
    scaler.update()


@pytest.mark.parametrize("order", ["unscale-first", "scaler-given"])
def test_amp_two_object_pattern_matches_unscaled_training(order):
    batches = _batches(4)
    plain = _model()
    _train_two_object(plain, torch.optim.SGD(plain.parameters(), lr=0.1),
                      SWGL(plain.parameters()), batches)
    amp = _model()
    base = torch.optim.SGD(amp.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    swgl = SWGL(amp.parameters(), scaler=scaler if order == "scaler-given" else None)
    for batch in batches:
        _amp_step(amp, base, swgl, scaler, batch, order)
    for a, b in zip(plain.parameters(), amp.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_scaler_given_unscales_the_base_grads_once():
    """With ``scaler=``, ``swgl.step()`` unscales the base's grads itself (no host read of
    the scale); a user who unscaled first (to clip) is not unscaled twice."""
    batches = _batches(3)
    runs = []
    for user_unscales in (False, True):
        model = _model()
        base = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        swgl = SWGL(model.parameters(), scaler=scaler)
        for batch in batches:
            base.zero_grad()
            scaler.scale(_loss(model, batch)).backward()
            scaled = [p.grad.clone() for p in model.parameters()]
            if user_unscales:
                scaler.unscale_(base)
            swgl.step()
            stage = scaler._per_optimizer_states[id(base)]["stage"]
            assert stage is torch.amp.grad_scaler.OptState.UNSCALED
            for g, p in zip(scaled, model.parameters()):   # update mode: grads left unscaled
                torch.testing.assert_close(p.grad, g / 2.0**10, rtol=0, atol=0)
            scaler.step(base)
            scaler.update()
        runs.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_seed_amp_snippet_without_scaler_fails_loudly():
    """The seed's order (swgl.step() on scaled grads, then scaler.step) must not train
    silently wrong."""
    model = _model()
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    swgl = SWGL(model.parameters())
    with pytest.raises(RuntimeError, match="saw scaled gradients"):
        _amp_step(model, base, swgl, scaler, _batches(1)[0], order="seed")


@pytest.mark.parametrize("mode", ["two-object", "wrapper"])
def test_amp_overflow_step_skips_swgl_and_base(mode):
    model = _model()
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    swgl = SWGL(model.parameters(), scaler=scaler) if mode == "two-object" else SWGL.wrap(base)
    weights = [p.detach().clone() for p in model.parameters()]
    state = {id(p): s["stability"].clone() for p, s in swgl.state.items()}
    base.zero_grad()
    scaler.scale(_loss(model, _batches(1)[0])).backward()
    model[0].weight.grad[1, 2] = float("inf")  # an fp16 overflow in one element
    if mode == "two-object":
        swgl.step()
        scaler.step(base)
    else:
        scaler.step(swgl)
    scaler.update()
    assert scaler.get_scale() == 2.0**15  # the scaler saw the overflow and backed off
    assert all(torch.equal(w, p) for w, p in zip(weights, model.parameters()))
    if mode == "wrapper":
        assert len(swgl.state) == 0  # the wrapper's step never ran
    for p, s in swgl.state.items():
        assert torch.equal(state[id(p)], s["stability"])
        assert float(s["step"]) == 0


def test_grad_scaler_step_on_the_wrapper_sees_unscaled_grads():
    batches = _batches(3)
    plain = _model()
    _train_wrapper(plain, SWGL.wrap(torch.optim.SGD(plain.parameters(), lr=0.1)), batches)
    amp = _model()
    opt = SWGL.wrap(torch.optim.SGD(amp.parameters(), lr=0.1))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    for batch in batches:
        opt.zero_grad()
        scaler.scale(_loss(amp, batch)).backward()
        scaler.step(opt)
        scaler.update()
    for a, b in zip(plain.parameters(), amp.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# -- real fp16 AMP on a GPU --------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for fp16")


@cuda
@pytest.mark.parametrize("order", ["unscale-first", "scaler-given", "wrapper"])
def test_fp16_autocast_trains_and_skips_overflow_steps(order):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)).cuda()
    base = torch.optim.AdamW(model.parameters(), lr=1e-2)
    # A huge initial scale: the first steps overflow in fp16 and must be skipped.
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**40)
    if order == "wrapper":
        opt = SWGL.wrap(base)
    else:
        opt = SWGL(model.parameters(), scaler=scaler if order == "scaler-given" else None)
    x = torch.randn(256, 32, device="cuda")
    y = (x[:, :4].argmax(1)).cuda()
    losses = []
    for _ in range(60):
        base.zero_grad()
        with torch.autocast("cuda", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward()
        if order == "wrapper":
            scaler.step(opt)
        else:
            if order == "unscale-first":
                scaler.unscale_(base)
            opt.step()
            scaler.step(base)
        scaler.update()
        losses.append(loss.item())
    assert scaler.get_scale() < 2.0**40  # overflow steps happened and were skipped
    steps = [float(s["step"]) for s in opt.state.values()]
    assert 0 < max(steps) < 60  # SWGL counted only the finite steps
    assert all(torch.isfinite(opt.stability(p)).all() for p in model.parameters())
    assert losses[-1] < 0.5 * losses[0]


# -- the two-object pattern's hooks are per instance ---------------------------------------------


def _two_object_run(side: bool, steps: int = 4, use_swgl: bool = True):
    model = _model()
    base = torch.optim.AdamW(model.parameters(), lr=1e-2)
    # damping on: the default's after phase then rescales every step (with its defaults, and
    # before a shift, v6 is plain AdamW and there is nothing for a side optimizer to take)
    swgl = SWGL(model.parameters(), lambda_reg=3.0)
    w = next(model.parameters())
    other = torch.optim.SGD([w], lr=0.0)
    for batch in _batches(steps):
        base.zero_grad()
        _loss(model, batch).backward()
        if use_swgl:
            swgl.step()
        if side:
            other.step()  # steps a managed param first: must not take the base's rescale
        base.step()
    return [p.detach().clone() for p in model.parameters()]


def test_a_side_optimizer_does_not_consume_the_update_rescale():
    """Issue 13's hook leak: with process-global hooks the side SGD applied the factors."""
    swgl = _two_object_run(side=False)
    for a, b in zip(swgl, _two_object_run(side=True)):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(swgl, _two_object_run(False, use_swgl=False)))


def test_an_optimizer_whose_init_raised_is_no_owner():
    """A half-built optimizer (its __init__ raised; a traceback still holds it) has no
    param_groups: the owner scan passes over it instead of failing the step."""
    class Broken(torch.optim.SGD):
        def __init__(self, params):
            raise ValueError("bad argument")

    kept = []
    try:
        Broken([torch.zeros(1, requires_grad=True)])
    except ValueError as exc:
        kept.append(exc)    # holds the frame, so the half-built object stays alive
    assert any(type(o) is Broken for o in gc.get_objects())
    for a, b in zip(_two_object_run(side=False), _two_object_run(side=True)):
        assert torch.equal(a, b)


def test_update_mode_rescales_the_base_step():
    """Without the rescale the run equals plain AdamW; with it, it must differ (the default
    rule with its damping on: without it, and before a shift, v6 is plain AdamW)."""
    model = _model()
    plain = _model()
    plain.load_state_dict(model.state_dict())
    base = torch.optim.AdamW(model.parameters(), lr=1e-2)
    plain_base = torch.optim.AdamW(plain.parameters(), lr=1e-2)
    _train_two_object(model, base, SWGL(model.parameters(), lambda_reg=3.0), _batches(3))
    for batch in _batches(3):
        plain_base.zero_grad()
        _loss(plain, batch).backward()
        plain_base.step()
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), plain.parameters()))


def test_a_base_built_later_is_found():
    """A new base per task: its first step is rescaled at SWGL's next step, then hooked."""
    model = _model()
    swgl = SWGL(model.parameters())
    _train_two_object(model, torch.optim.AdamW(model.parameters(), lr=1e-2), swgl, _batches(2))
    new_base = torch.optim.SGD(model.parameters(), lr=0.1)
    _train_two_object(model, new_base, swgl, _batches(2))
    assert id(new_base) in swgl._hooks.owner_ids
    assert not swgl._pending_update


def test_no_process_global_optimizer_hooks():
    from torch.optim import optimizer as torch_optimizer

    before = (len(torch_optimizer._global_optimizer_pre_hooks),
              len(torch_optimizer._global_optimizer_post_hooks))
    model = _model()
    _train_two_object(model, torch.optim.SGD(model.parameters(), lr=0.1),
                      SWGL(model.parameters()), _batches(1))
    after = (len(torch_optimizer._global_optimizer_pre_hooks),
             len(torch_optimizer._global_optimizer_post_hooks))
    assert after == before


# -- the default step waits for the host nowhere -------------------------------------------------


@pytest.fixture
def host_reads(monkeypatch):
    """Counts Tensor.item / tolist / __bool__ / __float__ / __int__ calls (each a host sync
    on a device)."""
    calls = []
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name):
            calls.append(_name)
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


#: each rule's own host reads per CPU step that applies: v5 and v6 read their group's
#: detector (its state and signal: the step is computed on the host) and its two flags (shift,
#: consolidated). Every step first reads its non-finite guard: on the CPU that costs no sync
#: and spares masked commits over the state (on CUDA they all stay device flags: the CUDA
#: tests). A skipped step reads the guard alone.
DETECTOR_READS = ["tolist", "__float__", "__bool__", "item"]
FLAG_READS = {"v4": [], "v5": DETECTOR_READS, "v6": DETECTOR_READS, "v7": DETECTOR_READS}
#: the guard of the rules' foreach variants on the CPU: the sums of the squares their EMA
#: reads (one read); where a sum is not finite, the generic guard decides (a second read)
GUARD_READS, SKIPPED_READS = ["tolist"], ["tolist", "__bool__"]


@pytest.mark.parametrize("api", ["two-object", "wrapper"])
def test_the_default_cpu_step_reads_only_its_guard_and_flags_on_the_host(api, host_reads):
    if api == "wrapper" and kernels._INTERPRET:
        pytest.skip("under Triton's interpreter the wrapper takes its fused path, whose "
                    "kernels run on the host")
    model = _model()
    base = torch.optim.SGD(model.parameters(), lr=0.1)  # torch's SGD reads nothing either
    swgl = SWGL(model.parameters()) if api == "two-object" else SWGL.wrap(base)
    batches = _batches(4)
    for i, batch in enumerate(batches):
        if i == 2:
            host_reads.clear()  # the first steps find the base and build the state
        (base if api == "two-object" else swgl).zero_grad()
        _loss(model, batch).backward()
        if i == 3:
            next(model.parameters()).grad[0] = float("nan")  # a skipped step: the guard alone
        swgl.step()
        if api == "two-object":
            base.step()
    assert host_reads == [*GUARD_READS, *FLAG_READS[DEFAULT_RULE], *SKIPPED_READS]


@pytest.mark.parametrize("rule, mode", [("v5", "update"), ("v4", "update"), ("v4", "grad")])
@pytest.mark.parametrize("kind", ["AdamW", "SGD"])
def test_swgl_optim_cpu_step_reads_only_its_guard_on_the_host(kind, rule, mode, host_reads):
    """swgl.optim's foreach path reads no step counter: on the CPU its host reads a step are
    the non-finite guard and the rule's flags (on CUDA device flags replace them, as the sync
    test checks); a skipped step reads the guard alone."""
    import swgl.optim

    model = _model()
    kw = dict(momentum=0.9) if kind == "SGD" else {}
    opt = getattr(swgl.optim, kind)(model.parameters(), lr=1e-3,
                                     swgl={"rule": rule, "mode": mode}, fused=False, **kw)
    for i, batch in enumerate(_batches(4)):
        if i == 2:
            host_reads.clear()  # the first steps build the state
        opt.zero_grad()
        _loss(model, batch).backward()
        if i == 3:
            next(model.parameters()).grad[0] = float("nan")
        opt.step()
    assert host_reads == ["__bool__", *FLAG_READS[rule], "__bool__"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_two_object_step_with_a_scaler_never_syncs():
    """The seed's AMP snippet with ``scaler=`` and torch's fused AdamW: no host sync in
    ``swgl.step()``, ``scaler.step(base)`` or ``scaler.update()`` (overflowed steps included)."""
    model = _model().cuda()
    base = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0**10)
    swgl = SWGL(model.parameters(), scaler=scaler)
    weights = []
    for i, (x, y) in enumerate(_batches(5)):
        base.zero_grad()
        scaler.scale(_loss(model, (x.cuda(), y.cuda()))).backward()
        if i == 4:
            next(model.parameters()).grad[0] = float("inf")
        weights.append([p.detach().clone() for p in model.parameters()])
        if i >= 2:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            swgl.step()
            scaler.step(base)
            scaler.update()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert scaler.get_scale() == 2.0**9          # the overflow was seen and skipped
    assert all(torch.equal(a, p) for a, p in zip(weights[-1], model.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(weights[0], weights[3]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("api", ["two-object", "wrapper", "swgl.optim", "swgl.optim-foreach"])
def test_the_default_cuda_step_never_syncs(api):
    """torch.cuda.set_sync_debug_mode("error") raises on any host sync, a skipped
    (non-finite) step included; fused torch AdamW as the base syncs nowhere either."""
    import swgl.optim

    model = _model().cuda()
    if api.startswith("swgl.optim"):
        base = opt = swgl.optim.AdamW(model.parameters(), lr=1e-3,
                                      fused=False if api.endswith("foreach") else None)
    else:
        base = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        opt = SWGL(model.parameters()) if api == "two-object" else SWGL.wrap(base)
    batches = [(x.cuda(), y.cuda()) for x, y in _batches(4)]
    for i, batch in enumerate(batches):
        base.zero_grad()
        _loss(model, batch).backward()
        if i == 3:
            next(model.parameters()).grad[0] = float("nan")
        # the first steps find the base, build the state and compile the kernels
        step_both(opt, base, api == "two-object", no_sync=i >= 2)
    if api.startswith("swgl.optim"):  # it skips a non-finite step itself (the others: AMP)
        assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("api", ["two-object", "wrapper"])
def test_the_variants_are_picked_again_only_when_options_or_params_change(api, monkeypatch):
    """A step reuses the variants its group's phases ran last step (picking took a tenth of a
    small model's CPU step); an option set by hand, a param that loses its grad, or a param's
    data replaced (another dtype or device comes with new data) picks again, and the step
    then runs what the new options ask for."""
    from swgl import functional

    picks = []
    plan = functional.plan
    monkeypatch.setattr(functional, "plan", lambda *a: picks.append(a) or plan(*a))
    model = _model()
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = SWGL(model.parameters()) if api == "two-object" else SWGL.wrap(base)
    prefix = "" if api == "two-object" else "swgl_"
    for batch in _batches(3):
        base.zero_grad()
        _loss(model, batch).backward()
        step_both(opt, base, api == "two-object")
    assert len(picks) == 1
    opt.param_groups[0][prefix + "foreach"] = False
    (batch,) = _batches(1)
    base.zero_grad()
    _loss(model, batch).backward()
    step_both(opt, base, api == "two-object")
    assert len(picks) == 2 and picks[-1][3] is False   # plan(params, rule, hp, foreach, ...)
    first = next(model.parameters())
    first.data = first.data.clone()
    base.zero_grad()
    _loss(model, batch).backward()
    step_both(opt, base, api == "two-object")
    assert len(picks) == 3
    base.zero_grad()
    _loss(model, batch).backward()
    first.grad = None
    step_both(opt, base, api == "two-object")
    assert len(picks) == 4


def test_warnings_point_at_the_users_line():
    """A warning raised inside a step reaches the user through torch's step wrapper,
    ``no_grad``, Dynamo's disable wrapper or the base's hooks: it is attributed to the user's
    call, not to a line of swgl or torch (fixed stacklevels pointed at wrapper.py, torch's
    optimizer.py and companion.py)."""
    def caught(fn):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            fn()
        return [(w.filename, str(w.message)) for w in seen]

    here = __file__
    model = _model()
    base = torch.optim.AdamW(model.parameters(), lr=1e-3)
    _train_wrapper(model, base, _batches(1))            # the base has state, SWGL none
    fresh = SWGL.wrap(base)
    batch = next(iter(_batches(1)))
    _loss(model, batch).backward()
    [(where, message)] = caught(fresh.step)
    assert where == here and "never seen" in message
    [(where, message)] = caught(lambda: SWGL.wrap(torch.optim.AdamW(model.parameters()))
                                .load_state_dict(base.state_dict()))
    assert where == here and "no SWGL state" in message
    # the two-object pattern: the warning comes from a hook on the base's step
    base = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        _loss(model, batch).backward()
        base.step()
    two = SWGL(model.parameters())
    _loss(model, batch).backward()
    two.step()
    [(where, message)] = caught(base.step)
    assert where == here and "resumed with saved state" in message
