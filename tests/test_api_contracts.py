"""Contracts a torch.optim user relies on, found broken by a user's audit (seventeenth
session): per-group state that does not depend on which param stepped, a wrapper that keeps
sharing its base's groups, options that take effect, state made when the optimizers step,
checkpoints refused by the wrong API, and ``on_task_boundary()`` under the default rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import swgl
from swgl import SWGL


def _model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4))


_GEN = torch.Generator().manual_seed(1)
_XA = torch.randn(256, 20, generator=_GEN)
_XB = torch.randn(256, 20, generator=_GEN) * 3
_TASKS = ((_XA, _XA[:, :4].argmax(1)), (_XB, (_XB[:, 4:8].argmax(1) + 1) % 4))
#: the step from which the stream switches to its second task (the detector fires just after)
_SWITCH = 120


def _loss(model: nn.Module, i: int) -> torch.Tensor:
    x, y = _TASKS[i >= _SWITCH]
    j = (i * 32) % 256
    device = next(model.parameters()).device
    return nn.functional.cross_entropy(model(x[j:j + 32].to(device)), y[j:j + 32].to(device))


_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA: the device's detector path"))]


def _make(api: str, model: nn.Module, **options):
    """(step function, the SWGL object) for ``api``, AdamW as the base."""
    if api == "swgl.optim":
        opt = swgl.optim.AdamW(model.parameters(), lr=1e-2, swgl=options or None)
        return opt.step, opt
    base = torch.optim.AdamW(model.parameters(), lr=1e-2)
    if api == "wrapper":
        opt = SWGL.wrap(base, **options)
        return opt.step, opt
    two = SWGL(model.parameters(), **options)

    def step():
        two.step()
        base.step()
    return step, two


def _zero(model: nn.Module) -> None:
    for p in model.parameters():
        p.grad = None


@pytest.mark.parametrize("device", _DEVICES)
@pytest.mark.parametrize("api", ["two-object", "wrapper", "swgl.optim"])
def test_a_param_that_missed_steps_does_not_set_the_group_back(api, device):
    """Every param holds a copy of its group's detector; one frozen across the shift (no grad
    from step 40 to 189) holds an old copy, which must not replace the group's when it steps
    again, nor be what ``shifts()`` reports."""
    model = _model().to(device)
    step, opt = _make(api, model)
    first = model[0].weight
    for i in range(200):
        first.requires_grad_(not 40 <= i < 190)
        _zero(model)
        _loss(model, i).backward()
        step()
        if i in (150, 199):
            (report,) = opt.shifts()
            assert report["steps"] == i + 1
            assert report["last_shift"] > _SWITCH
    key = "swgl_detector" if api == "swgl.optim" else "detector"
    # every copy, the one that missed steps included, holds the group's detector again
    copies = [opt.state[p][key] for p in model.parameters()]
    assert all(torch.equal(c, copies[0]) for c in copies)


def test_shifts_reads_the_group_not_a_param_that_never_steps():
    """A param that never gets a grad (an unused head) keeps its initial detector: the
    group's report is that of the params that step."""
    model = _model()
    unused = nn.Linear(3, 3)
    base = torch.optim.AdamW(model.parameters(), lr=1e-2)
    opt = SWGL([*unused.parameters(), *model.parameters()])
    for i in range(130):
        base.zero_grad()
        _loss(model, i).backward()
        opt.step()
        base.step()
    (report,) = opt.shifts()
    assert report["steps"] == 130
    assert report["last_shift"] > _SWITCH


def test_the_wrapper_follows_groups_changed_on_its_base():
    """The base's own ``load_state_dict`` makes new groups: a scheduler on the wrapper must
    still reach the base. The base's own ``add_param_group`` adds a group without SWGL's
    options: it gets the wrapper's."""
    model = _model()
    source = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _loss(model, 0).backward()
    source.step()
    checkpoint = source.state_dict()
    base = torch.optim.AdamW(model[0].parameters(), lr=1e-2)
    opt = SWGL.wrap(base, consolidation=1e-3)
    base.add_param_group({"params": list(model[2].parameters())})
    _zero(model)
    _loss(model, 0).backward()
    opt.step()   # was a KeyError: the new group had no SWGL options
    assert opt.param_groups[1]["swgl_consolidation"] == 1e-3
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-2)
    opt = SWGL.wrap(fresh)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.0)
    fresh.load_state_dict(checkpoint)   # the checkpoint's lr, 1e-2, as torch restores it
    _zero(model)
    _loss(model, 1).backward()
    opt.step()
    schedule.step()
    assert opt.param_groups is fresh.param_groups
    assert fresh.param_groups[0]["lr"] == 0.0   # the scheduler reached the base
    before = [p.detach().clone() for p in model.parameters()]
    _zero(model)
    _loss(model, 2).backward()
    opt.step()
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_wrapping_a_base_again_takes_the_new_options_and_keeps_the_users():
    model = _model()
    base = torch.optim.AdamW([{"params": list(model[0].parameters()), "swgl_alpha": 0.9},
                              {"params": list(model[2].parameters())}], lr=1e-2)
    SWGL.wrap(base)
    opt = SWGL.wrap(base, rule="v5", consolidation=0.1, alpha=0.95)
    first, second = opt.param_groups
    assert first["swgl_rule"] == second["swgl_rule"] == "v5"
    assert first["swgl_consolidation"] == second["swgl_consolidation"] == 0.1
    assert first["swgl_alpha"] == 0.9      # the user's own, per group
    assert second["swgl_alpha"] == 0.95


def test_weights_loaded_after_building_swgl_count_as_with_the_wrapper():
    """The two-object SWGL takes its anchor (and the rest of its state but the stability,
    which the seed's monitoring loop reads from the start) at a param's first step, as the
    wrapper does: building the optimizers before loading weights changes nothing."""
    pretrained = _model(seed=5).state_dict()
    runs = []
    for api in ("two-object", "wrapper"):
        model = _model()
        step, opt = _make(api, model)
        if api == "two-object":
            assert set(opt.state[model[0].weight]) == {"stability"}
        model.load_state_dict(pretrained)
        for i in range(200):
            _zero(model)
            _loss(model, i).backward()
            step()
        runs.append((list(model.parameters()), opt))
    (two_params, two), (wrap_params, wrapper) = runs
    assert two.shifts()[0]["last_shift"] > 0
    assert all(torch.equal(a, b) for a, b in zip(two_params, wrap_params))
    for a, b in zip(two_params, wrap_params):
        assert torch.equal(two.state[a]["consolidated"], wrapper.state[b]["consolidated"])


def test_a_checkpoint_of_the_other_api_is_refused_at_load():
    model = _model()
    two = SWGL(model.parameters())
    wrapper = SWGL.wrap(torch.optim.AdamW(model.parameters(), lr=1e-2))
    _loss(model, 0).backward()
    two.step()
    wrapper.step()
    with pytest.raises(ValueError, match=r"saved by SWGL\(params\), not by SWGL.wrap"):
        SWGL.wrap(torch.optim.AdamW(model.parameters())).load_state_dict(two.state_dict())
    with pytest.raises(ValueError, match=r"saved by SWGL.wrap\(base\), not by SWGL\(params\)"):
        SWGL(model.parameters()).load_state_dict(wrapper.state_dict())


@pytest.mark.parametrize("api", ["two-object", "wrapper"])
def test_a_named_task_boundary_consolidates_under_the_default(api):
    """Under v6 ``on_task_boundary()`` is a shift the user names: the importance learned so
    far is added (not erased), the anchor is the weights now, the detector's last shift is
    now and the pull acts from the next step."""
    model = _model()
    step, opt = _make(api, model)
    for i in range(_SWITCH + 10):
        _zero(model)
        _loss(model, i).backward()
        step()
    w = model[0].weight
    state = opt.state[w]
    importance = state["consolidated"].clone()
    assert importance.sum() > 0   # the detected shift
    opt.on_task_boundary()
    assert opt.shifts() == [{"steps": _SWITCH + 10, "last_shift": _SWITCH + 10}]
    assert (state["consolidated"] >= importance).all()
    assert state["consolidated"].sum() > importance.sum()
    torch.testing.assert_close(state["anchor"], w.detach(), rtol=0, atol=1e-6)
    assert torch.equal(state["path"], torch.zeros_like(w))
    # the same call on a fresh optimizer, before any step, changes nothing and pulls nothing
    model = _model()
    step, opt = _make(api, model)
    opt.on_task_boundary()
    _zero(model)
    _loss(model, 0).backward()
    step()
    assert opt.shifts() == [{"steps": 1, "last_shift": 0}]


def _steps(opt, base, model, n=2):
    for _ in range(n):
        opt.zero_grad()
        model(_XA[:8]).sum().backward()
        opt.step()
        if base is not None:
            base.step()


def _groups_api(api: str, model: nn.Module):
    """(optimizer, base stepped after it or None, the option's key for ``name``)."""
    if api == "two-object":
        return (SWGL(model.parameters()), torch.optim.SGD(model.parameters(), lr=0.1),
                lambda group, name: (group, name))
    if api == "wrapper":
        return (SWGL.wrap(torch.optim.SGD(model.parameters(), lr=0.1)), None,
                lambda group, name: (group, "swgl_" + name))
    return (swgl.optim.SGD(model.parameters(), lr=0.1), None,
            lambda group, name: (group["swgl"], name))


@pytest.mark.parametrize("api", ["two-object", "wrapper", "optim"])
@pytest.mark.parametrize("value, error", [(float("nan"), ValueError), (-1.0, ValueError),
                                          ("0.3", TypeError)])
def test_an_option_set_by_hand_between_steps_is_checked(api, value, error):
    """``param_groups[i][...]["consolidation"] = nan`` was taken as it was by the wrapper and
    the two-object API (every weight NaN after the next shift); ``swgl.optim`` checked it."""
    model = _model()
    opt, base, where = _groups_api(api, model)
    _steps(opt, base, model)
    options, key = where(opt.param_groups[0], "consolidation")
    options[key] = value
    with pytest.raises(error, match="consolidation"):
        _steps(opt, base, model, 1)
    options[key] = 3e-4
    _steps(opt, base, model, 1)


@pytest.mark.parametrize("api", ["two-object", "wrapper", "optim"])
def test_a_rule_changed_after_a_step_is_refused_and_before_one_taken(api):
    """v6's state and options are not v7's (v7's term is v6's over the segment's length, its
    strength a thousand times v6's): a group's rule set by hand after SWGL has stepped it is
    refused, naming both rules; before any step it is an option like another."""
    model = _model()
    opt, base, where = _groups_api(api, model)
    options, key = where(opt.param_groups[0], "rule")
    strength = where(opt.param_groups[0], "consolidation")
    options[key], strength[0][strength[1]] = "v7", None     # before any step: taken
    _steps(opt, base, model)
    assert strength[0][strength[1]] == 0.3
    options[key] = "v6"
    with pytest.raises(ValueError, match="rule changed from 'v7' to 'v6'"):
        _steps(opt, base, model, 1)
    options[key] = "v7"
    _steps(opt, base, model, 1)
    # a checkpoint saved under another rule brings its state with it: loaded, not refused
    other = _model(1)
    saved_opt, saved_base, _ = _groups_api(api, other)
    _steps(saved_opt, saved_base, other)
    opt.load_state_dict(saved_opt.state_dict())
    _steps(opt, base, model, 1)
    assert where(opt.param_groups[0], "rule")[0][where(opt.param_groups[0], "rule")[1]] == "v6"


@pytest.mark.parametrize("api", ["two-object", "wrapper", "swgl.optim"])
def test_a_whole_train_step_compiles_and_matches_eager(api):
    """``torch.compile`` of a train step that calls ``opt.step()`` (a common pattern), across
    the task switch and the shift the detector finds there: SWGL's step runs eagerly inside
    it (:func:`swgl.base.eager_under_compile`). Traced, it failed under torch 2.11 (an attribute
    set on the optimizer, caught on an H200 host), and a flag indexed by a traced bool failed
    (nineteenth session). The two-object base is torch's AdamW, which Dynamo traces: its math
    in another order."""
    import torch._dynamo

    def run(compiled: bool) -> tuple[list[torch.Tensor], list]:
        model = _model()
        step, opt = _make(api, model)

        def train(x, y):
            _zero(model)
            nn.functional.cross_entropy(model(x), y).backward()
            step()
        fn = torch.compile(train, backend="eager") if compiled else train
        for i in range(_SWITCH + 10):
            x, y = _TASKS[i >= _SWITCH]
            j = (i * 32) % 256
            fn(x[j:j + 32], y[j:j + 32])
        return [p.detach().clone() for p in model.parameters()], opt.shifts()

    torch._dynamo.reset()
    (compiled, compiled_shifts), (eager, eager_shifts) = run(True), run(False)
    assert compiled_shifts == eager_shifts == [{"steps": _SWITCH + 10, "last_shift": _SWITCH + 1}]
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
@pytest.mark.parametrize("api", ["two-object", "wrapper", "swgl.optim"])
def test_a_copied_optimizer_trains_on_as_the_original(api, how):
    """``copy.deepcopy((model, opt))`` and pickle: torch's ``Optimizer.__getstate__`` keeps
    only defaults, state and param_groups, so a copy lost SWGL's own attributes and failed at
    its first step (a user's audit, nineteenth session). A copy taken across the shift trains
    on as the original does, to the bit."""
    import copy
    import pickle

    def build():
        model = _model()
        if api == "swgl.optim":
            opt = swgl.optim.AdamW(model.parameters(), lr=1e-2)
            return model, opt, None
        base = torch.optim.AdamW(model.parameters(), lr=1e-2)
        return model, (SWGL(model.parameters()) if api == "two-object" else SWGL.wrap(base)), base

    def train(model, opt, base, steps):
        for i in steps:
            _zero(model)
            _loss(model, i).backward()
            opt.step()
            if base is not None and api == "two-object":
                base.step()

    original = build()
    train(*original, range(_SWITCH + 10))
    copied = (copy.deepcopy(original) if how == "deepcopy"
              else pickle.loads(pickle.dumps(original)))
    assert copied[1].shifts() == original[1].shifts() != [{"steps": 0, "last_shift": 0}]
    for run in (original, copied):
        train(*run, range(_SWITCH + 10, _SWITCH + 40))
    for a, b in zip(original[0].parameters(), copied[0].parameters()):
        assert torch.equal(a, b)
    assert copied[1].shifts() == original[1].shifts()


@pytest.mark.parametrize("api", ["two-object", "wrapper", "swgl.optim"])
def test_a_param_listed_twice_is_refused(api):
    """torch only warns about a param listed twice in a group (and says it will refuse it);
    SWGL would update its state twice a step (a user's audit, nineteenth session)."""
    model = _model()
    params = list(model.parameters())
    params.append(params[0])
    with pytest.warns(UserWarning, match="duplicate"), \
            pytest.raises(ValueError, match=r"params\[4\] appears twice"):
        if api == "two-object":
            SWGL(params)
        elif api == "wrapper":
            SWGL.wrap(torch.optim.SGD(params, lr=0.1))
        else:
            swgl.optim.SGD(params, lr=0.1)


def test_a_base_with_state_swgl_never_saw_warns_and_says_why():
    """A base that stepped without SWGL (a checkpoint without SWGL's state) and a base
    wrapped a second time (the first wrapper keeps its SWGL state) each warn, naming their
    case."""
    model = _model()
    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _zero(model)
    _loss(model, 0).backward()
    base.step()
    with pytest.warns(UserWarning, match="a checkpoint without SWGL state"):
        _steps(SWGL.wrap(base), None, model, 1)
    with pytest.warns(UserWarning, match="another SWGL.wrap of this base optimizer came first"):
        _steps(SWGL.wrap(base), None, model, 1)


def test_a_copy_between_the_two_objects_steps_keeps_the_pending_update():
    """The two-object pattern pickled between ``swgl.step()`` and ``base.step()``: the update
    SWGL left for the base step travels with the copy, without its cached variants (closures,
    which pickle cannot take); the copy applies it at its next ``swgl.step()`` and trains on.
    (torch copies a param without its grad, so the copy's base step in between does nothing:
    copy between iterations to continue exactly.)"""
    import pickle

    model = _model()
    base = torch.optim.AdamW(model.parameters(), lr=1e-2)
    two = SWGL(model.parameters())
    for i in range(_SWITCH + 10):
        _zero(model)
        _loss(model, i).backward()
        two.step()
        if i < _SWITCH + 9:
            base.step()
    assert two._pending_update   # swgl.step() ran, base.step() not yet
    copied_model, copied_two, copied_base = pickle.loads(pickle.dumps((model, two, base)))
    assert len(copied_two._pending_update) == len(two._pending_update)
    assert all(entry.plan is None for entry, _ in copied_two._pending_update)
    for i in range(_SWITCH + 10, _SWITCH + 13):
        _zero(copied_model)
        _loss(copied_model, i).backward()
        copied_two.step()
        copied_base.step()
    assert not copied_two._pending_update   # the hooks on the copied base apply it now
    assert all(torch.isfinite(p).all() for p in copied_model.parameters())
