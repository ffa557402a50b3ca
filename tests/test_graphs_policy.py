"""The CUDA-graph policy of swgl.graphs, with a capture that runs on the CPU.

The fake capture runs ``fn`` once (as a capture would record it) and replays by counting, so
these tests check when the phases are captured, replayed or run eagerly; that a replay does
what the eager step does is tests/test_graphs_cuda.py's (CUDA only)."""

from __future__ import annotations

import importlib.util
import logging
import os

import pytest
import torch

from swgl import SWGL
from swgl.base import SWGLBase
from swgl.graphs import CAPTURE_WINDOW, MAX_CAPTURES, GraphedPhases, PhaseGraph, PhaseGraphs


class FakeCapture:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.captured = 0
        self.replayed = 0

    def __call__(self, fn):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.captured += 1
        out = fn()

        def replay() -> None:
            self.replayed += 1
        return replay, out


def test_eager_first_then_captured_then_replayed():
    cap = FakeCapture()
    graph = PhaseGraph("before", cap)
    calls = []

    def fn():
        calls.append(1)
        return len(calls)

    assert graph.run("k", fn) == 1 and not graph.from_graph       # first sight: eager
    assert graph.run("k", fn) == 2 and graph.from_graph           # repeated: captured
    assert (cap.captured, cap.replayed) == (1, 1)                 # ... and replayed once
    assert graph.run("k", fn) == 2 and graph.from_graph           # replayed: fn not run
    assert graph.run("k", fn) == 2
    assert len(calls) == 2 and cap.replayed == 3 and graph.replays == 2


def test_a_graph_keeps_the_launch_tables_it_captured(monkeypatch):
    """A captured kernel reads its launch tables by address at every replay; the kernels'
    plan cache (an LRU) drops them after newer plans (another optimizer, or state replaced at
    every step), and replays look nothing up. The graph keeps what its capture looked up, for
    as long as it lives: on a GPU the freed tables' memory was reused under the replays (an
    illegal memory access, found on the branch wip/wrapper-fused)."""
    import gc
    import weakref
    from collections import OrderedDict

    from swgl import kernels

    monkeypatch.setattr(kernels, "_PLANS", OrderedDict())
    graph = PhaseGraph("before", FakeCapture())
    refs = []

    def fn():   # the phase: looks its tables up in the cache, as the fused variants do
        plan = kernels.cached_plan("phase", [], [], lambda: [torch.zeros(8)])
        refs.append(weakref.ref(plan[0]))   # (returns nothing: the graph keeps its output)

    graph.run("k", fn)
    graph.run("k", fn)                                # captured: its lookup is held
    assert graph.from_graph
    for n in range(2 * kernels._MAX_PLANS):           # newer plans push it out of the cache
        kernels.cached_plan(("another optimizer", n), [], [], lambda: [torch.zeros(8)])
    assert "phase" not in {key[0] for key in kernels._PLANS}
    gc.collect()
    assert refs[-1]() is not None                     # alive while the graph may replay
    graph.reset()
    gc.collect()
    assert refs[-1]() is None                         # and released with it


def test_a_graph_keeps_what_its_capture_holds(monkeypatch):
    """What a step reads outside any launch table (step counters, device scalars, state:
    :func:`swgl.kernels.hold`) is kept as long as the graph captured around it, and nothing
    is kept outside a capture."""
    import gc
    import weakref

    from swgl import kernels

    graph = PhaseGraph("before", FakeCapture())
    refs = []

    def fn():
        counter = torch.zeros(())
        refs.append(weakref.ref(counter))
        kernels.hold([counter])

    graph.run("k", fn)                                # eager: nothing held
    gc.collect()
    assert refs[-1]() is None
    graph.run("k", fn)                                # captured: held with the graph
    gc.collect()
    assert refs[-1]() is not None
    graph.reset()
    gc.collect()
    assert refs[-1]() is None


def test_a_plan_is_not_reused_for_tensors_of_another_size_at_the_same_address(monkeypatch):
    """A freed param leaves its address to the caching allocator, which may hand it to a
    param of another size (another model, another test of the process): its plan must not
    be reused, or the kernels read and write past the new tensor's end (a device fault on a
    GPU, which ends the process's CUDA context)."""
    from collections import OrderedDict

    from swgl import kernels

    monkeypatch.setattr(kernels, "_PLANS", OrderedDict())
    storage = torch.zeros(64)
    small, large = storage[:8], storage[:32]      # one address, one dtype, two sizes
    assert small.data_ptr() == large.data_ptr()
    builds = []

    def plan_of(t):
        return kernels.cached_plan("sizes", [[t]], [], lambda: builds.append(t.numel()) or t)

    plan_of(small)
    plan_of(large)
    plan_of(small)
    assert builds == [8, 32]


def test_another_key_runs_eagerly_and_is_captured_once_it_repeats():
    cap = FakeCapture()
    graph = PhaseGraph("before", cap)
    for _ in range(3):
        graph.run("a", lambda: "a")
    assert graph.run("b", lambda: "b") == "b" and not graph.from_graph
    assert graph.generation == 1
    graph.run("b", lambda: "b")
    assert graph.generation == 2 and graph.from_graph
    # the old key is eager again: only the latest graph is kept
    graph.run("a", lambda: "a")
    assert not graph.from_graph


def test_no_key_always_runs_eagerly():
    cap = FakeCapture()
    graph = PhaseGraph("before", cap)
    for _ in range(4):
        graph.run(None, lambda: 0)
    assert cap.captured == 0 and not graph.from_graph


def test_keys_that_keep_changing_turn_graphs_off(caplog):
    cap = FakeCapture()
    graph = PhaseGraph("before", cap, max_captures=2)
    with caplog.at_level(logging.INFO, logger="swgl.graphs"):
        for key in ("a", "a", "b", "b", "c", "c", "c"):
            graph.run(key, lambda: 0)
    assert cap.captured == 2 and not graph.enabled
    assert "changed 2 times within" in caplog.text
    assert MAX_CAPTURES >= 2


def test_keys_that_change_rarely_are_captured_every_time():
    """A loss scale that grows every 2000 steps, or a task boundary now and then, never turns
    the graphs off."""
    cap = FakeCapture()
    graph = PhaseGraph("before", cap, max_captures=2)
    for change in range(5):
        for _ in range(CAPTURE_WINDOW):
            graph.run(change, lambda: 0)
    assert graph.enabled and cap.captured == 5


def test_a_failed_capture_warns_runs_eagerly_and_stays_off():
    graph = PhaseGraph("before", FakeCapture(fail=True))
    graph.run("k", lambda: 1)
    with pytest.warns(UserWarning, match="failed to capture"):
        assert graph.run("k", lambda: 2) == 2
    assert not graph.enabled and not graph.from_graph
    assert graph.run("k", lambda: 3) == 3


def test_a_phase_that_cannot_be_captured_runs_eagerly_from_its_first_call():
    cap = FakeCapture()
    phases = GraphedPhases(capture=cap)
    asked = []

    def blocker():
        asked.append(1)
        return "a param is on cpu"

    for _ in range(3):
        assert phases.run_before("k", [], lambda: 7, blocker) == 7
    assert cap.captured == 0 and not phases.enabled and len(asked) == 1
    required = GraphedPhases(required=True, capture=cap)
    with pytest.raises(ValueError, match="cuda_graphs=True.*a param is on cpu"):
        required.run_before("k", [], lambda: 7, blocker)


def test_the_after_phase_replays_only_after_a_replayed_before_phase():
    cap = FakeCapture()
    graphs = PhaseGraphs(cap)
    ran = []
    for step in range(5):
        graphs.run_before("k", lambda: "pending")
        graphs.run_after("parts", lambda step=step: ran.append(step))
    # before: eager (0), captured (1), replays; after: eager while before was eager, then
    # eager at first sight (1), captured (2), replays (3, 4)
    assert ran == [0, 1, 2]
    assert graphs.after.from_graph and graphs.after.replays == 2
    # a new before graph drops the after graph that read the old one's outputs
    graphs.run_before("k2", lambda: "p")
    graphs.run_after("parts", lambda: ran.append("eager"))
    graphs.run_before("k2", lambda: "p")
    assert graphs.after._replay is None


def test_cuda_graphs_is_checked():
    w = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(TypeError, match="cuda_graphs"):
        SWGL([w], cuda_graphs="yes")
    with pytest.raises(TypeError, match="cuda_graphs"):
        SWGL.wrap(torch.optim.SGD([w], lr=0.1), cuda_graphs=1)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU's answer")
def test_on_the_cpu_no_graph_is_made():
    w = torch.nn.Parameter(torch.randn(4))
    opt = SWGL.wrap(torch.optim.SGD([w], lr=0.1))
    for _ in range(3):
        w.grad = torch.randn(4)
        opt.step()
    assert opt._graphs is None
    assert opt._graph_key() is None
    required = SWGL.wrap(torch.optim.SGD([w], lr=0.1), cuda_graphs=True)
    with pytest.raises(ValueError, match="cuda_graphs=True.*CUDA is not available"):
        required.step()


def _fake_graphs(monkeypatch, opt: SWGLBase) -> FakeCapture:
    """``opt`` as if on CUDA, its phases 'captured' by a FakeCapture."""
    cap = FakeCapture()
    monkeypatch.setattr(type(opt), "_graphs_possible", lambda self: True)
    monkeypatch.setattr(type(opt), "_graph_blocker", lambda self: None)
    opt._graphs = GraphedPhases(capture=cap)
    return cap


@pytest.mark.parametrize("rule", ["v6", "v4"])
@pytest.mark.parametrize("api", ["wrapper", "two-object"])
def test_the_key_follows_what_the_phases_read(monkeypatch, api, rule):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8))
    base = torch.optim.SGD([w], lr=0.1)
    opt = SWGL.wrap(base, rule=rule) if api == "wrapper" else SWGL([w], rule=rule)
    _fake_graphs(monkeypatch, opt)
    g = torch.randn(8)
    w.grad = g
    opt.step()                                 # the wrapper makes its state at its first step
    key = opt._graph_key()
    assert key == opt._graph_key()
    w.grad = g.clone()                         # a grad elsewhere: copied, not in the key
    assert opt._graph_key() == key
    w.grad = None                              # no grad: another list of params
    assert opt._graph_key() != key
    w.grad = g
    group = opt.param_groups[0]
    name = "swgl_alpha" if api == "wrapper" else "alpha"
    old = group[name]
    group[name] = 0.9                          # another option
    assert opt._graph_key() != key
    group[name] = old
    assert opt._graph_key() == key
    opt.on_task_boundary()
    if rule == "v4":                           # its state restarts: new tensors
        assert opt._graph_key() != key
    else:                                      # v6 consolidates in place: the same tensors
        assert opt._graph_key() == key


def test_the_phases_read_kept_buffers_and_the_base_its_own_grads(monkeypatch):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(8))
    seen = []

    class Base(torch.optim.SGD):
        def step(self, closure=None):
            seen.append(w.grad)
            return super().step(closure)

    opt = SWGL.wrap(Base([w], lr=0.1))
    cap = _fake_graphs(monkeypatch, opt)
    grads = [torch.randn(8) for _ in range(5)]
    for g in grads:
        w.grad = g          # a new tensor at every step: the key does not read its address
        opt.step()
    assert all(a is b for a, b in zip(seen, grads)) and w.grad is grads[-1]
    # the first step makes the state (a new key); the before phase is captured at the third,
    # the after phase at the fourth
    assert cap.captured == 2
    assert (opt._graphs.before.replays, opt._graphs.after.replays) == (2, 1)
    entry, snaps = opt._graphs.before._out[0]
    buffers = opt._graphs.kept.buffers
    assert entry.aux[0][1] is buffers[0] and torch.equal(buffers[0], grads[-1])
    assert snaps[0] is next(iter(opt._kept_snapshots.values()))[1][0]


def test_new_params_with_grads_drop_the_graphs(monkeypatch):
    w, v = torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(3))
    opt = SWGL.wrap(torch.optim.SGD([w, v], lr=0.1))
    _fake_graphs(monkeypatch, opt)
    for _ in range(4):
        w.grad = torch.randn(4)
        opt.step()
    assert opt._graphs.before._replay is not None
    v.grad = torch.randn(3)
    w.grad = torch.randn(4)
    opt.step()
    assert len(opt._graphs.kept.buffers) == 2 and not opt._graphs.before.from_graph


def test_a_blocked_optimizer_never_redirects_the_grads(monkeypatch, caplog):
    """What cannot be captured is found at the first step, before any grad is copied."""
    torch.manual_seed(0)
    monkeypatch.setattr(SWGLBase, "_graphs_possible", lambda self: True)
    w, ref = torch.nn.Parameter(torch.randn(6)), torch.nn.Parameter(torch.randn(6))
    ref.data.copy_(w.data)
    opt = SWGL.wrap(torch.optim.SGD([w], lr=0.1))
    plain = SWGL.wrap(torch.optim.SGD([ref], lr=0.1), cuda_graphs=False)
    with caplog.at_level(logging.INFO, logger="swgl.graphs"):
        for _ in range(4):
            g = torch.randn(6)
            w.grad, ref.grad = g, g.clone()
            opt.step()
            plain.step()
            assert w.grad is g
    assert not opt._graphs.before.enabled and opt._graphs.kept.buffers == []
    assert "CUDA is not available" in caplog.text or "not the current CUDA" in caplog.text
    assert torch.equal(w, ref)


def test_swgl_optim_keys_on_what_its_step_reads_but_the_lr(monkeypatch):
    import swgl.optim

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    w = torch.nn.Parameter(torch.randn(4))
    opt = swgl.optim.AdamW([w], lr=1e-3)
    assert opt._graph_key() is None     # a CPU param: no graph
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    w.grad = torch.randn(4)
    key = opt._graph_key()
    opt.param_groups[0]["lr"] = 5e-4    # a scheduler's step: the kernels read it on the device
    assert opt._graph_key() == key
    opt.param_groups[0]["weight_decay"] = 0.1
    assert opt._graph_key() != key
    with pytest.raises(TypeError, match="cuda_graphs"):
        swgl.optim.SGD([w], lr=0.1, cuda_graphs="auto")


@pytest.mark.skipif(not (os.environ.get("TRITON_INTERPRET") == "1"
                         and importlib.util.find_spec("triton")),
                    reason="swgl.optim's Triton step on the CPU needs TRITON_INTERPRET=1")
@pytest.mark.parametrize("rule", ["v5", "v6", "v7"])
def test_swgl_optim_replays_its_triton_step_with_the_schedulers_lr(monkeypatch, rule):
    """Under Triton's interpreter the step runs its kernels on the CPU; a fake capture runs
    it once, so the replays here only count: the equality of replays is the CUDA test's."""
    import swgl.optim

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64))
    opt = swgl.optim.AdamW([w], lr=1e-2, swgl={"rule": rule})
    cap = FakeCapture()
    monkeypatch.setattr(type(opt), "_graph_key", lambda self: ("fixed", self._state_version))
    monkeypatch.setattr(type(opt), "_graph_blocker", lambda self: None)
    opt._graphs = GraphedPhases(capture=cap)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for _ in range(5):
        w.grad = torch.randn(64)
        opt.step()
        sched.step()
    assert cap.captured == 1 and opt._graphs.before.replays >= 2
    lr = opt._lr[id(opt.param_groups[0])]
    assert lr.item() == pytest.approx(1e-2 * 0.5 ** 4)   # the last step's lr, set on device


@pytest.mark.skipif(not (os.environ.get("TRITON_INTERPRET") == "1"
                         and importlib.util.find_spec("triton")),
                    reason="swgl.optim's Triton step on the CPU needs TRITON_INTERPRET=1")
def test_swgl_optim_reads_the_groups_lr_where_graphs_cannot_run_this_step(monkeypatch):
    """The kernels read the lr's device scalar only where this step set it; a step that may
    not run as a graph (the option turned off, graphs still on) reads the group's lr, not a
    scalar left from an earlier step."""
    import swgl.optim
    from swgl.optim import _base

    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64))
    opt = swgl.optim.AdamW([w], lr=1e-2)
    possible = [True]
    monkeypatch.setattr(type(opt), "_graph_key",
                        lambda self: ("fixed", self._state_version) if possible[0] else None)
    monkeypatch.setattr(type(opt), "_graph_blocker", lambda self: None)
    opt._graphs = GraphedPhases(capture=FakeCapture())
    seen = []
    step = _base.triton_step
    monkeypatch.setattr(_base, "triton_step",
                        lambda groups, *a: seen.append([g.lr for g in groups]) or step(groups, *a))
    for i in range(2):
        possible[0] = i == 0
        w.grad = torch.randn(64)
        opt.step()
    assert opt._graphs.enabled
    assert isinstance(seen[0][0], torch.Tensor) and seen[1] == [None]
