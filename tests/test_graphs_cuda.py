"""CUDA graphs of the phases (swgl.graphs) do what the eager phases do, bit for bit.

Each test trains two copies of a model alike, one with ``cuda_graphs=False``, and compares
params and SWGL's state. The policy itself is tests/test_graphs_policy.py's (CPU)."""

from __future__ import annotations

import copy

import pytest
import torch

from swgl import SWGL
from toy import step_both

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="CUDA graphs need a CUDA device")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(),
                               torch.nn.Linear(64, 64), torch.nn.Tanh(),
                               torch.nn.Linear(64, 5)).cuda()


def _batches(n: int, shift_at: int | None = None):
    """``(x, y, loss weight)``; from ``shift_at`` on the loss weighs 10 times more, so the
    squared grad norm jumps a hundredfold: v5 detects a shift (after its first 50 steps)."""
    gen = torch.Generator().manual_seed(1)
    out = []
    for i in range(n):
        x = torch.randn(16, 32, generator=gen)
        weight = 10.0 if shift_at is not None and i >= shift_at else 1.0
        out.append((x.cuda(), torch.randint(0, 5, (16,), generator=gen).cuda(), weight))
    return out


def _build(model, api: str, **options):
    """``api``: "two-object", "wrapper" (the phases around torch's foreach AdamW, whose host
    step counters keep the wrapper off its fused path) or "wrapper-fused" (around torch's fused
    AdamW: swgl.optim's fused step on its state, one graph)."""
    if api == "wrapper":
        base = torch.optim.AdamW(model.parameters(), lr=3e-3, foreach=True)
    else:
        base = torch.optim.AdamW(model.parameters(), lr=3e-3, fused=True)
    if api.startswith("wrapper"):
        opt = SWGL.wrap(base, **options)
        return opt, opt, opt
    return SWGL(model.parameters(), **options), base, None


def _train(model, api: str, batches, hold_grads: bool = False, on_step=None, **options):
    opt, base, _ = _build(model, api, **options)
    held = []
    for i, (x, y, weight) in enumerate(batches):
        base.zero_grad(set_to_none=True)
        (weight * torch.nn.functional.cross_entropy(model(x), y)).backward()
        if hold_grads:   # the next backward's grads land elsewhere
            held.append([p.grad for p in model.parameters()])
        if on_step is not None:
            on_step(i, opt)
        if api.startswith("wrapper"):
            opt.step()
        else:
            opt.step()
            base.step()
    torch.cuda.synchronize()
    return opt


def _same(a: torch.nn.Module, b: torch.nn.Module, opt_a, opt_b) -> None:
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
        sa, sb = opt_a.state[p], opt_b.state[q]
        for name in ("stability", "consolidated", "anchor", "path", "detector", "step"):
            key = name if name in sa else "swgl_" + name
            if key in sa:
                assert torch.equal(sa[key], sb[key]), name


@pytest.mark.parametrize("api", ["two-object", "wrapper", "wrapper-fused"])
@pytest.mark.parametrize("rule", ["v7", "v6", "v5", "v4"])
def test_replays_equal_the_eager_steps_across_a_shift(api, rule):
    batches = _batches(80, shift_at=60)
    eager_model, graph_model = _model(), _model()
    eager = _train(eager_model, api, batches, rule=rule, cuda_graphs=False)
    graphed = _train(graph_model, api, batches, rule=rule)
    assert eager._graphs is None or eager._graphs.before.replays == 0
    assert graphed._graphs.before.replays >= 70
    if api == "wrapper-fused":   # one fused step: no after phase
        assert graphed._stepping is not None and graphed._graphs.after.replays == 0
    else:
        assert graphed._graphs.after.replays >= 70
    _same(eager_model, graph_model, eager, graphed)
    if rule != "v4":   # the shift was found, under graphs as eagerly
        detector = graphed.state[next(graph_model.parameters())]["detector"]
        assert detector[3] > 60


@pytest.mark.parametrize("api", ["two-object", "wrapper", "wrapper-fused"])
def test_grads_that_move_are_still_replayed(api):
    """The phases read copies of the grads at fixed addresses, wherever backward put them."""
    batches = _batches(8)
    eager_model, graph_model = _model(), _model()
    eager = _train(eager_model, api, batches, cuda_graphs=False)
    graphed = _train(graph_model, api, batches, hold_grads=True)
    assert graphed._graphs.before.replays >= 4
    _same(eager_model, graph_model, eager, graphed)


@pytest.mark.parametrize("api", ["wrapper", "wrapper-fused"])
def test_state_loaded_mid_run_is_what_the_graphs_read(api):
    batches = _batches(12)
    models = [_model(), _model()]
    saved = {}

    def on_step(i, opt):
        if i == 4:
            saved.setdefault(id(opt), copy.deepcopy(opt.state_dict()))
        if i == 8:   # back to step 4's state: new state tensors under the same params
            opt.load_state_dict(saved[id(opt)])

    eager = _train(models[0], api, batches, on_step=on_step, cuda_graphs=False)
    graphed = _train(models[1], api, batches, on_step=on_step)
    assert graphed._graphs.before.captures >= 2
    _same(*models, eager, graphed)


@pytest.mark.parametrize("api", ["two-object", "wrapper", "wrapper-fused", "swgl.optim"])
def test_capture_and_replay_make_no_host_sync(api):
    import swgl.optim

    model = _model()
    if api == "swgl.optim":
        opt = base = swgl.optim.AdamW(model.parameters(), lr=3e-3)
    else:
        opt, base, _ = _build(model, api)
    for i, (x, y, _) in enumerate(_batches(8)):
        base.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        # the capture (third step) included
        step_both(opt, base, api == "two-object", no_sync=i >= 1)
    assert opt._graphs.before.replays >= 4


def test_cuda_graphs_true_refuses_a_rule_that_syncs():
    model = _model()
    opt, base, _ = _build(model, "two-object", rule="v1", cuda_graphs=True)
    with pytest.raises(ValueError, match="rule 'v1'"):
        for x, y, _ in _batches(4):
            base.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            base.step()


def test_grad_mode_is_never_captured_and_rescales_the_grads_the_base_reads():
    batches = _batches(6)
    models = [_model(), _model()]
    eager = _train(models[0], "two-object", batches, rule="v4", mode="grad", cuda_graphs=False)
    auto = _train(models[1], "two-object", batches, rule="v4", mode="grad")
    assert not auto._graphs.before.enabled and auto._graphs.kept.buffers == []
    _same(*models, eager, auto)


@pytest.mark.parametrize("rule", ["v5", "v6", "v7"])
@pytest.mark.parametrize("name", ["AdamW", "SGD"])
def test_swgl_optim_replays_equal_its_eager_steps_under_a_scheduler(name, rule):
    """The lr the scheduler sets at each step reaches the replayed kernels (a device
    scalar), across a detected shift."""
    import swgl.optim

    batches = _batches(80, shift_at=60)
    models = [_model(), _model()]
    opts = []
    for model, graphs in zip(models, (False, None)):
        kw = dict(lr=3e-3) if name == "AdamW" else dict(lr=0.05, momentum=0.9)
        opt = getattr(swgl.optim, name)(model.parameters(), cuda_graphs=graphs,
                                        swgl={"rule": rule}, **kw)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=80)
        for x, y, weight in batches:
            opt.zero_grad(set_to_none=True)
            (weight * torch.nn.functional.cross_entropy(model(x), y)).backward()
            opt.step()
            sched.step()
        torch.cuda.synchronize()
        opts.append(opt)
    assert opts[0]._graphs is None and opts[1]._graphs.before.replays >= 70
    for p, q in zip(models[0].parameters(), models[1].parameters()):
        assert torch.equal(p, q)
        for key, value in opts[0].state[p].items():
            assert torch.equal(value, opts[1].state[q][key]), key
    assert opts[1].state[next(models[1].parameters())]["swgl_detector"][3] > 60
