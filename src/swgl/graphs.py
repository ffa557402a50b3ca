"""CUDA graphs of SWGL's phases: on CUDA the default path replays each phase as one graph.

Why: a BERT-base training step on an H200 waits for the host (docs/results.md, issue 13).
SWGL's phases walk ~200 params in Python and launch a few dozen kernels: 3 to 11 ms of host
time for about 2 ms of device work. A CUDA graph replays every kernel a phase launched in one
call, and none of the Python that gathered them runs.

When a replay is right. A graph replays the kernels it captured, on the addresses they had
then, with the host values (the options) baked in. So a phase is replayed only
while its *key* equals the key it was captured under. The caller's key holds everything its
Python reads that can change between steps:
- which params have grads, and the params' addresses;
- the group options (the grads the phases read are unscaled: with ``scaler=`` the
  two-object ``step()`` unscales them first, and ``GradScaler.step`` does for the wrapper);
- a version of the optimizer's state, bumped whenever state tensors are made or replaced
  (``load_state_dict``, ``on_task_boundary``, a param's first grad).

Everything else the phases touch lives at fixed addresses:
- the state, updated in place;
- the grads, copied at each step into buffers kept for the purpose (:class:`KeptGrads`). The
  caching allocator does not give backward the same blocks at every step: on an H200 the
  grads' addresses alternated between two sets, so a graph keyed on them was never replayed;
- the snapshot of the params (update mode), kept between steps in one buffer;
- swgl.optim's lr, a device scalar set outside the graph at each step.

So a state tensor swapped by hand (``opt.state[p]["stability"] = t``) is not seen by a
captured graph; change state through the optimizer's methods.

The policy (:class:`PhaseGraph`):

* a key seen for the first time runs eagerly (it also warms up: state, Triton builds, launch
  tables);
* the same key at the next call is captured, then replayed (a capture runs nothing: the
  replay does the step);
* a replay whenever the key recurs; another key runs eagerly, and is captured in its turn
  once it repeats. A phase that needs :data:`MAX_CAPTURES` captures within
  :data:`CAPTURE_WINDOW` calls has its graphs turned off (a key that keeps changing: captures
  would cost more than they save);
* a capture that fails (the phase did something a graph cannot hold, such as a host sync)
  turns graphs off for the phase, with a warning, and the call runs eagerly.

What cannot be captured at all (a rule with host syncs, CPU params, ...) is found once per new
key, before any grad is redirected (:class:`GraphedPhases`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

import torch

from swgl._warn import warn

__all__ = ["PhaseGraph", "PhaseGraphs", "KeptGrads", "GraphedPhases", "MAX_CAPTURES",
           "CAPTURE_WINDOW", "capture_cuda", "possible", "params_key", "params_blocker",
           "grad_owners"]

log = logging.getLogger(__name__)

#: graphs are turned off for a phase that needs this many captures within
#: :data:`CAPTURE_WINDOW` calls (a key that keeps changing); rarer changes (a checkpoint
#: loaded, a task boundary, an option set by a schedule now and then) are captured every time
MAX_CAPTURES = 8
CAPTURE_WINDOW = 1000

#: ``capture(fn) -> (replay, out)``: runs ``fn`` under capture, returns what replays it and
#: what ``fn`` returned; raises when the capture fails
Capture = Callable[[Callable[[], Any]], tuple[Callable[[], None], Any]]


def capture_cuda(fn: Callable[[], Any]) -> tuple[Callable[[], None], Any]:
    """``fn`` captured as a CUDA graph on a side stream.

    ``thread_local`` capture: another thread's CUDA calls (a DataLoader's pinning thread) do
    not break it. Unlike ``torch.cuda.graph``, no device sync, garbage collection or cache
    flush around it: a capture stays free of host syncs like the steps around it."""
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    current = torch.cuda.current_stream()
    stream.wait_stream(current)
    try:
        with torch.cuda.stream(stream):
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                out = fn()
            finally:
                graph.capture_end()
    finally:
        current.wait_stream(stream)
    return graph.replay, out


class PhaseGraph:
    """One phase's graph and the policy of the module docstring.

    ``capture`` is the capturing function (default :func:`capture_cuda`; the tests pass one
    that runs on the CPU)."""

    def __init__(self, name: str, capture: Capture | None = None,
                 max_captures: int = MAX_CAPTURES) -> None:
        self.name = name
        self.enabled = True
        self.max_captures = max_captures
        #: captures made, replays made (diagnostics; the tests read them)
        self.captures = 0
        self.replays = 0
        self._calls = 0
        self._recent: deque[int] = deque(maxlen=max_captures)   # the calls that captured
        #: bumped at each capture: a key for what the other phase captured from this one's output
        self.generation = 0
        #: whether the last call's result came from a graph (captured or replayed)
        self.from_graph = False
        self._capture = capture or capture_cuda
        self._replay: Callable[[], None] | None = None
        self._key: Hashable = None
        self._out: Any = None
        self._seen: Hashable = None
        #: the kernels' launch tables the graph reads, kept as long as it (see
        #: :func:`swgl.kernels.hold_plans`: their cache may drop them while it replays)
        self._held: list[Any] = []

    def reset(self) -> None:
        """Drop the graph (its memory pool goes with it once nothing it returned is held)."""
        self._replay, self._key, self._out, self._seen = None, None, None, None
        self._held = []

    def disable(self, why: str, quiet: bool = False) -> None:
        if self.enabled and not quiet:
            log.info("swgl: CUDA graphs off for the %s phase: %s", self.name, why)
        self.enabled = False
        self.reset()

    def run(self, key: Hashable, fn: Callable[[], Any]) -> Any:
        """``fn()``'s result: replayed, captured and replayed, or run eagerly (see the module
        docstring). ``key`` None runs eagerly."""
        self.from_graph = False
        self._calls += 1
        if not self.enabled or key is None:
            return fn()
        if self._replay is not None and key == self._key:
            self._replay()
            self.replays += 1
            self.from_graph = True
            return self._out
        if key != self._seen:
            self._seen = key
            return fn()
        recent = self._recent
        if len(recent) == self.max_captures and self._calls - recent[0] < CAPTURE_WINDOW:
            self.disable(f"its key changed {self.max_captures} times within "
                         f"{self._calls - recent[0]} calls")
            return fn()
        self.reset()
        from swgl import kernels  # not at import: swgl.kernels imports the rules

        try:
            with kernels.hold_plans() as held:
                replay, out = self._capture(fn)
        except RuntimeError as err:
            warn(f"swgl: a CUDA graph of the {self.name} phase failed to capture ({err}); "
                 "the phase runs eagerly from now on")
            self.disable(f"capture failed: {err}")
            return fn()
        self._replay, self._key, self._out, self._held = replay, key, out, held
        self.captures += 1
        recent.append(self._calls)
        self.generation += 1
        replay()
        self.from_graph = True
        return out


class PhaseGraphs:
    """The before and after phases' graphs of one optimizer.

    The after phase reads what the before phase returned; its key names the before graph's
    generation, so it is replayed only after a replay of the same before graph."""

    def __init__(self, capture: Capture | None = None) -> None:
        self.before = PhaseGraph("before", capture)
        self.after = PhaseGraph("after", capture)

    def run_before(self, key: Hashable, fn: Callable[[], Any]) -> Any:
        generation = self.before.generation
        out = self.before.run(key, fn)
        if self.before.generation != generation:   # a new capture: the old after graph read
            self.after.reset()                     # the old one's outputs
        return out

    def bypass(self) -> None:
        """The caller runs the before phase itself this step: no after graph follows it."""
        self.before.from_graph = False

    def run_after(self, parts: Hashable, fn: Callable[[], Any]) -> Any:
        """``parts``: what selects the after phase's inputs among the before phase's output."""
        if not self.before.from_graph or not self.before.enabled:
            return self.after.run(None, fn)
        return self.after.run((self.before.generation, parts), fn)


class KeptGrads:
    """Copies of the grads in buffers kept at fixed addresses, which a graph reads wherever
    backward put the grads: the caching allocator does not give backward the same blocks at
    every step (measured on an H200: the addresses alternated between two sets)."""

    def __init__(self) -> None:
        self._ids: tuple[int, ...] | None = None
        self.buffers: list[torch.Tensor] = []

    def clear(self) -> None:
        self._ids, self.buffers = None, []

    def refresh(self, owners: list[torch.Tensor], grads: list[torch.Tensor]) -> bool:
        """Copy ``grads`` (the ``owners``' grads) in, one multi-tensor copy; True when new
        buffers were made (other owners): graphs captured on the old ones must go."""
        ids = tuple(map(id, owners))
        new = ids != self._ids
        if new:
            self._ids, self.buffers = ids, [torch.empty_like(g) for g in grads]
        torch._foreach_copy_(self.buffers, grads)
        return new

    def swapped(self, owners: list[torch.Tensor], grads: list[torch.Tensor],
                fn: Callable[[], Any]) -> Any:
        """``fn()`` with each owner's ``.grad`` pointing to its buffer, then back to ``grads``."""
        for p, b in zip(owners, self.buffers):
            p.grad = b
        try:
            return fn()
        finally:
            for p, g in zip(owners, grads):
                p.grad = g


class GraphedPhases:
    """An optimizer's phases as graphs (:class:`PhaseGraphs`), reading kept grads
    (:class:`KeptGrads`), with what cannot be captured found once per new key, before any
    grad is redirected.

    ``required`` (the option ``cuda_graphs=True``) turns "cannot" into a ValueError."""

    def __init__(self, required: bool = False, capture: Capture | None = None) -> None:
        self.graphs = PhaseGraphs(capture)
        self.kept = KeptGrads()
        self.required = required
        self._checked: Hashable = None

    @property
    def enabled(self) -> bool:
        return self.graphs.before.enabled

    @property
    def before(self) -> PhaseGraph:
        return self.graphs.before

    @property
    def after(self) -> PhaseGraph:
        return self.graphs.after

    def run_before(self, key: Hashable, owners: list[torch.Tensor], fn: Callable[[], Any],
                   blocker: Callable[[], str | None]) -> Any:
        """``fn()``, the first (or only) phase: replayed, captured or eager. ``key`` None:
        eagerly (graphs are off for the caller); ``owners``: the params with grads."""
        if not self.enabled:
            key = None
        elif key is not None and key != self._checked:
            why = blocker()
            if why is not None:
                self._fail(why)
                self.graphs.before.disable(why)
                self.graphs.after.disable(why, quiet=True)
                key = None
            self._checked = key
        if key is None:
            if self.required:
                self._fail(blocker() if self.enabled else "a capture failed (see the warning)")
            self.graphs.bypass()
            self.kept.clear()
            return fn()
        grads = [p.grad for p in owners]
        if self.kept.refresh(owners, grads):
            self.graphs.before.reset()
            self.graphs.after.reset()
        return self.graphs.run_before(key, lambda: self.kept.swapped(owners, grads, fn))

    def run_after(self, parts: Hashable, fn: Callable[[], Any]) -> Any:
        return self.graphs.run_after(parts, fn)

    def _fail(self, why: str | None) -> None:
        if self.required:
            raise ValueError("cuda_graphs=True, but the phases cannot be captured: "
                             f"{why or 'graphs are off'}")


# -- what both optimizer families (SWGL's classes, swgl.optim) ask of their params ----------


def possible(option: bool | None, phases: GraphedPhases | None, param_groups) -> bool:
    """Cheap, at every step: whether a step may run as graphs at all (the option allows it,
    CUDA is there, the graphs are not off, the params are on CUDA); the rest is the caller's
    blocker, asked once per new key."""
    if option is False or (phases is not None and not phases.enabled):
        return False
    # the params' device first: a CPU step then asks nothing of CUDA (microseconds a call)
    first = next((p for g in param_groups for p in g["params"]), None)
    return first is not None and first.is_cuda and torch.cuda.is_available()


def params_key(params: list[torch.Tensor]) -> tuple[tuple, tuple]:
    """A param group's part of a key: which params have grads, and the params' addresses."""
    return tuple(p.grad is None for p in params), tuple(map(torch.Tensor.data_ptr, params))


def params_blocker(params) -> str | None:
    """Why these params' phases cannot be captured, or None: they must be plain tensors (not
    a DTensor: its data is its shard's) on the current CUDA device."""
    for p in params:
        if type(p) not in (torch.Tensor, torch.nn.Parameter):
            return f"a param is a {type(p).__name__}"
        if not p.is_cuda or p.device.index != torch.cuda.current_device():
            return f"a param is on {p.device}, not the current CUDA device"
    return None


def grad_owners(param_groups) -> list[torch.Tensor]:
    """The params with grads, in group order: the owners of :class:`KeptGrads`' buffers."""
    return [p for group in param_groups for p in group["params"] if p.grad is not None]
