"""What both SWGL optimizer classes share: the per-param state, the rule's two phases over
every param group, checkpoints of SWGL's own state.

The state of each param lives in ``self.state[p]``: the storage format's tensors (for the
default fp32 format ``{"stability"}``) plus ``"step"`` (a 0-d tensor on the param's device),
so the seed's monitoring loop (``swgl.state[p]['stability']``) works with either class;
``opt.stability(p)`` gives the fp32 view under any format.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from swgl import functional, graphs
from swgl.checkpoint import check_step
from swgl.options import check_options, check_rule_change, group_label, hyper
from swgl.rules import RULES
from swgl.state import STORAGES
from swgl.state._common import check_tensor
from swgl.stats import DEFAULT_QUANTILES, layer_stats
from swgl.stats import shifts as detector_shifts

__all__ = ["SWGLBase", "Pending", "PREFIX", "check_params", "check_cuda_graphs", "copied_state",
           "copies", "fresh_extra", "local", "run_closure", "snapshot"]

#: Prefix of SWGL's keys in the wrapper's param groups and state_dict.
PREFIX = "swgl_"


def check_params(group: dict[str, Any]) -> None:
    seen: set[int] = set()
    for i, p in enumerate(group["params"]):
        if id(p) in seen:
            # torch warns (and says it will refuse it): SWGL would step its state twice a step
            raise ValueError(f"params[{i}] appears twice in its param group; list it once")
        seen.add(id(p))
        if not isinstance(p, Tensor):
            raise TypeError(f"params[{i}] must be a torch.Tensor, got {type(p).__name__}")
        if p.is_complex():
            raise TypeError(f"params[{i}] is complex ({p.dtype}); SWGL supports real params only")
        if not p.is_floating_point():
            raise TypeError(f"params[{i}] has dtype {p.dtype}; SWGL needs floating-point params")


def check_cuda_graphs(value: object) -> None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"cuda_graphs must be None, True or False, got {value!r}")


#: the group options the phases read (without the wrapper's prefix): the rule's options and
#: the storage format
_PHASE_OPTIONS = ("rule", "alpha", "lambda_reg", "eps", "max_boost", "signal", "max_damping",
                  "mode", "shock", "consolidation", "consolidation_horizon", "storage",
                  "foreach", "fused")


@functools.lru_cache(maxsize=4)
def _phase_keys(prefix: str) -> tuple[str, ...]:
    """The keys of :data:`_PHASE_OPTIONS` in a param group whose options carry ``prefix``."""
    return tuple(prefix + name for name in _PHASE_OPTIONS)


class SWGLBase(Optimizer):
    """State handling and the rule's phases, shared by both classes.

    On CUDA the phases run as CUDA graphs (:mod:`swgl.graphs`) unless ``cuda_graphs`` is
    False; ``_state_version`` is bumped whenever state tensors are replaced, so that no graph
    replays onto tensors the state no longer holds."""

    #: what :func:`swgl.stats.find_swgl` looks for
    is_swgl = True
    #: None (auto: on CUDA when the rule allows it), True (required), False (never)
    cuda_graphs: bool | None = None
    _state_version = 0
    _graphs: graphs.GraphedPhases | None = None

    #: Prefix of SWGL's options in a param group: the wrapper shares its groups with a base
    #: optimizer whose own ``eps``, ``alpha`` or ``foreach`` must not be overwritten.
    option_prefix = ""

    def __init__(self, params: Any, defaults: dict[str, Any]) -> None:
        #: per param group (by id): the group and its options as last checked (:meth:`_recheck`)
        self._options_seen: dict[int, tuple[dict[str, Any], tuple]] = {}
        #: per param group (by id): the group, its key and its variants (:meth:`_plan`)
        self._plans: dict[int, tuple[dict[str, Any], tuple, functional.Plan]] = {}
        super().__init__(params, defaults)

    #: what a copy does not take (:meth:`__getstate__`): caches keyed by ids or holding
    #: closures, CUDA graphs, kept buffers; and torch's hooks, which its own copies drop too
    _REBUILT = ("_options_seen", "_plans", "_graphs", "_kept_snapshots")

    def __getstate__(self) -> dict[str, Any]:
        return copied_state(self, self._REBUILT)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._options_seen = {}
        self._plans = {}
        self._kept_snapshots = {}

    def _option(self, group: dict[str, Any], name: str) -> Any:
        return group[self.option_prefix + name]

    def _storage(self, group: dict[str, Any]):
        return STORAGES[self._option(group, "storage")]

    def _new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        self._state_version += 1
        return self._fresh_state(p, group)

    def _fresh_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        """The state a param's first step makes (its step counter 0)."""
        rule = RULES[self._option(group, "rule")]
        # the step counter lives on the param's device: the default rule reads it there
        step = torch.zeros((), device=local(p).device)
        # the storage format takes the first state tensor; the others are plain fp32
        extra = {name: fresh_extra(p, init) for name, init in rule.state[1:]}
        return {**self._storage(group).init(p, rule.init_value), **extra, "step": step}

    def _extra_names(self, group: dict[str, Any]) -> list[str]:
        return [name for name, _ in RULES[self._option(group, "rule")].state[1:]]

    def stability(self, p: Tensor) -> Tensor:
        """``p``'s stability EMA as an fp32 tensor, whatever the storage format."""
        for group in self.param_groups:
            if any(q is p for q in group["params"]):
                state = self.state.get(p)
                if not state:
                    raise KeyError("this param has no SWGL state yet (no step taken)")
                return self._storage(group).load(state, p)
        raise KeyError("this tensor is not one of the optimizer's params")

    def _gather(self, group: dict[str, Any]):
        """The group's params with grads, their grads, the stabilities as fp32 working
        tensors, the step counters and the rule's further state by name (made at a param's
        first step). One comprehension per list: a small model's step spent a tenth of its
        Python here, appending to nine lists per param."""
        storage = self._storage(group)
        params = [p for p in group["params"] if p.grad is not None]
        states = [self.state[p] for p in params]
        for p, state in zip(params, states):
            if p.grad.is_sparse:
                raise TypeError(
                    "SWGL does not support sparse gradients; build the embedding with "
                    "sparse=False or leave it out of SWGL's params"
                )
            if "step" not in state:
                self._on_fresh_state(p)
                state.update(self._new_state(p, group))
        # the phases run under no_grad: no detached copy of a param is needed
        return (params, [p.grad for p in params],
                [storage.load(state, p) for p, state in zip(params, states)],
                [state["step"] for state in states],
                {name: [state[name] for state in states] for name in self._extra_names(group)})

    def _on_fresh_state(self, p: Tensor) -> None:
        """Hook for the wrapper's 'base has state but SWGL does not' warning."""

    def _recheck(self, index: int, group: dict[str, Any]) -> tuple:
        """Check again a group's SWGL options set by hand since its last step
        (``param_groups[i]["swgl_consolidation"] = ...``), as the constructor checks them
        (ValueError or TypeError naming the option); a ``rule`` changed on a group SWGL has
        stepped is refused (:func:`swgl.options.check_rule_change`). One tuple of the group's
        options per step, whatever the number of params. Returns the options as checked."""
        options = self._phase_options(group)
        seen = self._options_seen.get(id(group))
        if seen is not None and seen[0] is group and seen[1] == options:
            return options
        if seen is not None and seen[0] is group:
            check_rule_change(seen[1][0], options[0], group["params"], self.state,
                              f"param_groups[{index}]")
        check_options(group, self.option_prefix, label=group_label(index))
        self._checked(group)
        return self._options_seen[id(group)][1]

    def _plan(self, group: dict[str, Any], options: tuple, params: list[Tensor]
              ) -> functional.Plan:
        """The variants the group's phases run (:func:`swgl.functional.plan`), picked again
        only when its options (as :meth:`_recheck` returns them) or the params it gathered
        (which, and their data: a param's device, dtype and size go with it) changed: picking
        took a tenth of a small model's CPU step."""
        key = (options, tuple(map(id, params)), tuple(map(Tensor.data_ptr, params)))
        held = self._plans.get(id(group))
        if held is not None and held[0] is group and held[1] == key:
            return held[2]
        pre = self.option_prefix
        chosen = functional.plan(params, group[pre + "rule"], hyper(group, pre),
                                 group[pre + "foreach"], group.get(pre + "fused"))
        self._plans[id(group)] = (group, key, chosen)
        return chosen

    def _checked(self, group: dict[str, Any]) -> None:
        """Record ``group``'s options as just checked (numbers coerced, unset options filled):
        :meth:`_recheck` compares the next step's to them (and a group checked when added is
        not checked, nor warned about, again)."""
        self._options_seen[id(group)] = (group, self._phase_options(group))

    def _phase_options(self, group: dict[str, Any]) -> tuple:
        """The values of the options the phases read, in :data:`_PHASE_OPTIONS`' order."""
        return tuple(map(group.get, _phase_keys(self.option_prefix)))

    @torch.no_grad()
    def _modulate(self) -> tuple[bool | Tensor, list[Pending]]:
        """Run the rule's ``before`` phase over every group.

        Returns whether it ran (False, or a device flag, if non-finite grads made it skip)
        and, for groups whose rule has an ``after`` phase, what it needs after the base step.
        """
        applied: bool | Tensor = True
        pending: list[Pending] = []
        for index, group in enumerate(self.param_groups):
            options = self._recheck(index, group)
            params, grads, stabilities, steps, extra = self._gather(group)
            chosen = self._plan(group, options, params)
            outcome = functional.run_before(chosen, params, grads, stabilities, steps,
                                            extra_state=extra)
            storage = self._storage(group)
            # fp32 state is updated in place (masked on the device); other formats are
            # stored back only when the step applied, which reads the flag on the host
            in_place = storage.name == "fp32"
            if not in_place and bool(outcome.applied):
                for p, working in zip(params, stabilities):
                    storage.store(self.state[p], working)
            if outcome.aux is not None and chosen.after is not None:
                kept = (stabilities, steps, extra) if in_place else None
                pending.append(Pending(group, params, outcome.aux, kept, chosen))
            applied = outcome.applied if applied is True else applied & outcome.applied
        return applied, pending

    # -- CUDA graphs (swgl.graphs) ----------------------------------------------------------

    def _graphs_possible(self) -> bool:
        return graphs.possible(self.cuda_graphs, self._graphs, self.param_groups)

    def _graph_key(self) -> tuple | None:
        """What the phases' Python reads that can change between steps (see
        :mod:`swgl.graphs`), or None when graphs are off. The grads are not in it: the phases
        read copies of them in buffers kept at fixed addresses (:meth:`_run_before`)."""
        if not self._graphs_possible():
            return None
        parts: list[Any] = [self._state_version, len(self.state)]
        for group in self.param_groups:
            parts += graphs.params_key(group["params"])
            parts.append(self._phase_options(group))
        return tuple(parts)

    def _graph_blocker(self) -> str | None:
        """Why the phases cannot be captured now, or None: every rule must allow it in update
        mode (grad mode rescales the grads the base reads), the state be fp32, and the params
        with grads be plain tensors on the current CUDA device."""
        if not torch.cuda.is_available():
            return "CUDA is not available"
        for index, group in enumerate(self.param_groups):
            rule = self._option(group, "rule")
            if not RULES[rule].graphable:
                return f"rule {rule!r} (param group {index}) is not capturable"
            mode = self._option(group, "mode") or RULES[rule].modes[0]
            if mode != "update":
                return f"mode {mode!r} (param group {index}) rescales the grads in place"
            if self._option(group, "storage") != "fp32":
                return f"storage {self._option(group, 'storage')!r} reads a flag on the host"
        return graphs.params_blocker(graphs.grad_owners(self.param_groups))

    def _run_before(self, fn: Callable[[], list[tuple[Pending, list[Tensor] | None]]]
                    ) -> list[tuple[Pending, list[Tensor] | None]]:
        """``fn()`` (the before phase and the snapshots: pending entries with their
        snapshots), as a CUDA graph where :mod:`swgl.graphs` allows. While graphs are on, the
        phases read the grads from kept buffers (:class:`swgl.graphs.KeptGrads`); the base
        optimizer steps with the params' own grads."""
        key = self._graph_key()
        if self._graphs is None:
            if key is None and not self.cuda_graphs:
                return fn()
            self._graphs = graphs.GraphedPhases(required=bool(self.cuda_graphs))
        owners = [] if key is None else graphs.grad_owners(self.param_groups)
        out = self._graphs.run_before(key, owners, fn, self._graph_blocker)
        if not self._graphs.enabled:   # graphs went off: the snapshots need not stay
            getattr(self, "_kept_snapshots", {}).clear()
        return out

    def _run_after(self, pending: list[Pending], snapshots: list[list[Tensor] | None]) -> None:
        """:meth:`_after`, as a CUDA graph after a replayed before phase."""
        if self._graphs is None:
            self._after(pending, snapshots)
            return
        parts = (tuple(map(id, pending)), tuple(len(e.params) for e in pending))
        self._graphs.run_after(parts, lambda: self._after(pending, snapshots))

    def _keeps_snapshots(self) -> bool:
        """Snapshots live in kept buffers (fixed addresses) while graphs may run."""
        return self._graphs_possible()

    def _state_lists(self, group: dict[str, Any], params: list[Tensor]):
        """``(stabilities, steps, extra)`` of ``params`` (stepped before) as the rules take
        them: the stabilities as fp32 working tensors of the group's storage."""
        storage = self._storage(group)
        return ([storage.load(self.state[p], p) for p in params],
                [self.state[p]["step"] for p in params],
                {name: [self.state[p][name] for p in params]
                 for name in self._extra_names(group)})

    @torch.no_grad()
    def _after(self, pending: list[Pending], snapshots: list[list[Tensor] | None]) -> None:
        """The rule's ``after`` phase for each pending group (the base has stepped)."""
        for entry, snaps in zip(pending, snapshots):
            pre = self.option_prefix
            if entry.state is not None:  # the before phase's lists (fp32: the state itself)
                stabilities, steps, extra = entry.state
            else:
                stabilities, steps, extra = self._state_lists(entry.group, entry.params)
            if entry.plan is not None:   # the before phase's params, all of them
                functional.run_after(entry.plan, entry.params, snaps, stabilities, steps,
                                     entry.aux, extra_state=extra)
                continue
            functional.swgl_after(
                entry.params, snaps, stabilities, steps, entry.aux,
                rule=entry.group[pre + "rule"], hp=hyper(entry.group, pre),
                foreach=entry.group[pre + "foreach"], fused=entry.group.get(pre + "fused"),
                extra_state=extra,
            )

    def stats(self, names: Any = None, quantiles: tuple[float, ...] | None = None):
        """Per-layer summaries of the stability state (see :func:`swgl.stats.layer_stats`).

        ``names`` is a model or an iterable of ``(name, param)`` used to label the layers.
        """
        return layer_stats(self, names, DEFAULT_QUANTILES if quantiles is None else quantiles)

    def shifts(self) -> list[dict[str, int] | None]:
        """Per param group, what its shift detector has seen (rules v5 to v7; v6 the default):
        see :func:`swgl.stats.shifts`."""
        return detector_shifts(self.param_groups, self.state)

    @torch.no_grad()
    def on_task_boundary(self) -> None:
        """For users who know where one task ends and the next begins. Under a rule with a
        shift detector (v5 to v7; v6 the default): consolidate now, as at a detected shift (the
        importance learned since the last one is kept, the anchor taken, the pull starts;
        :attr:`swgl.rules.base.Rule.boundary`). Under the others (v1 to v4): forget the
        stability estimates, as after a full shock. The base optimizer's state is left alone."""
        pre = self.option_prefix
        for group in self.param_groups:
            rule = group[pre + "rule"]
            stepped = [p for p in group["params"] if "step" in self.state.get(p, {})]
            if RULES[rule].boundary is None:
                for p in stepped:
                    self.state[p].update(self._new_state(p, group))
            elif stepped:
                stabilities, _, extra = self._state_lists(group, stepped)
                functional.swgl_boundary(stepped, stabilities, rule=rule, hp=hyper(group, pre),
                                         extra_state=extra)

    # -- checkpoints ---------------------------------------------------------------------------

    def _swgl_state_dict(self) -> dict[int, dict[str, Any]]:
        """SWGL's own per-param state, keyed by position in ``param_groups`` (torch's ids)."""
        out: dict[int, dict[str, Any]] = {}
        index = 0
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state and "step" in state:
                    out[index] = dict(state)
                index += 1
        return out

    def _check_swgl_state(self, saved: dict[int, dict[str, Any]], saved_groups: list) -> None:
        """Check saved SWGL state against the params, with the storage format each saved group
        names; raises ValueError and changes nothing."""
        owners = [(p, saved_group) for group, saved_group in zip(self.param_groups, saved_groups)
                  for p in group["params"]]
        for index, entry in saved.items():
            if not isinstance(index, int) or not 0 <= index < len(owners):
                raise ValueError(
                    f"state_dict has SWGL state for param index {index!r}, but the optimizer "
                    f"holds {len(owners)} params"
                )
            p, saved_group = owners[index]
            storage = STORAGES[saved_group[self.option_prefix + "storage"]]
            extra = [name for name, _ in RULES[saved_group[self.option_prefix + "rule"]].state[1:]]
            expected = {*storage.keys, *extra, "step"}
            if not isinstance(entry, dict) or set(entry) != expected:
                keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
                raise ValueError(
                    f"state_dict entry for param {index} must have keys {sorted(expected)} "
                    f"(storage {storage.name!r}), got {keys}"
                )
            check_step(entry["step"], index)
            storage.check(entry, p, index)
            rule = RULES[saved_group[self.option_prefix + "rule"]]
            for name, init in rule.state[1:]:
                _check_extra(entry[name], f"{name} for param {index}", init, p,
                             signed=name in rule.signed_state)

    def _install_swgl_state(self, saved: dict[int, dict[str, Any]]) -> None:
        """Replace SWGL's state with checked ``saved`` state, keeping the saved dtypes."""
        params = [p for group in self.param_groups for p in group["params"]]
        self.state.clear()
        self._state_version += 1
        self._options_seen.clear()   # the groups' options are the checkpoint's now
        self._plans.clear()
        for index, entry in saved.items():
            p = params[index]
            state = {k: v.detach().to(device=p.device, copy=True) for k, v in entry.items()}
            state["step"] = entry["step"].detach().to(device=local(p).device,
                                                      dtype=torch.float32, copy=True)
            self.state[p] = state

    def _saved_groups(self, state_dict: dict[str, Any]) -> list[dict[str, Any]]:
        """Each group's SWGL options after loading ``state_dict`` (checked), without applying."""
        merged = []
        for group, saved in zip(self.param_groups, state_dict["param_groups"]):
            options = {**group, **{k: v for k, v in saved.items() if k != "params"}}
            check_options(options, self.option_prefix)
            merged.append(options)
        return merged


def copied_state(optimizer: Optimizer, rebuilt: tuple[str, ...]) -> dict[str, Any]:
    """An SWGL optimizer's ``__getstate__`` for ``copy.deepcopy`` and pickle: torch's keeps
    only ``defaults``, ``state`` and ``param_groups``, which left a copy without SWGL's own
    attributes (an ``AttributeError`` at its first step). Leaves out the attributes named in
    ``rebuilt`` (caches keyed by ids or holding closures, CUDA graphs, kept buffers: the
    class's ``__setstate__`` makes them again) and torch's hooks, as torch's copies do."""
    return {key: value for key, value in optimizer.__dict__.items()
            if key not in rebuilt and not key.startswith("_optimizer_")}


def local(t: Tensor) -> Tensor:
    """A DTensor's local shard (FSDP2: the rules run on shards), else ``t``."""
    return t.to_local() if hasattr(t, "to_local") else t


class Pending(NamedTuple):
    """What a group's ``after`` phase needs once the base optimizer has stepped."""

    group: dict[str, Any]
    params: list[Tensor]
    aux: list[Tensor]
    #: (stabilities, steps, extra state by name) as the before phase gathered them, when the
    #: storage format updates them in place (fp32): the after phase looks nothing up again
    state: tuple[list[Tensor], list[Tensor], dict[str, list[Tensor]]] | None = None
    #: the variants the before phase ran (:func:`swgl.functional.plan`), for the after phase
    #: on the same params; None on a part of them (:meth:`split`: it picks again)
    plan: functional.Plan | None = None

    def only(self, ids: set[int]) -> tuple[Pending, Pending]:
        """(the part for the params in ``ids``, the rest)."""
        (taken, _), (left, _) = self.split(ids, None)
        return taken, left

    def split(self, ids: set[int], snaps: list[Tensor] | None):
        """((part in ``ids``, its snapshots), (the rest, its snapshots))."""
        inside = [id(p) in ids for p in self.params]
        if all(inside):  # the common case: one base optimizer holds every param
            return (self, snaps), (self._take([]), None if snaps is None else [])
        parts = []
        for want in (True, False):
            idx = [i for i, flag in enumerate(inside) if flag is want]
            parts.append((self._take(idx), None if snaps is None else [snaps[i] for i in idx]))
        return parts[0], parts[1]

    def _take(self, idx: list[int]) -> Pending:
        state = None if self.state is None else (
            [self.state[0][i] for i in idx], [self.state[1][i] for i in idx],
            {name: [ts[i] for i in idx] for name, ts in self.state[2].items()})
        return Pending(self.group, [self.params[i] for i in idx], [self.aux[i] for i in idx],
                       state)


def eager_under_compile(fn: Callable) -> Callable:
    """``fn`` run eagerly inside a ``torch.compile``'d train step (a graph break there), as
    torch's own ``Optimizer.zero_grad`` and ``state_dict`` are: SWGL's step keeps Python state
    on the optimizer (caches, versions, pending work), and Dynamo fails on an attribute set on
    an ``Optimizer`` subclass (torch 2.11: pytorch/pytorch#171590) or, tracing a whole step,
    drops it (2.12 and 2.13, measured on a toy optimizer). torch's lazy form: Dynamo is
    imported at the first call, which torch's optimizers' constructors do anyway."""
    return torch._disable_dynamo(fn)


def run_closure(closure: Callable[[], Any] | None) -> Any:
    """``closure()`` with gradients enabled (the step runs under no_grad), or None."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


def fresh_extra(p: Tensor, init: float | str | tuple[float, ...]) -> Tensor:
    """A rule's extra state tensor: filled with ``init``, a copy of ``p`` (``"param"``), or a
    small vector of the values ``init`` lists (a tuple: the rule's per-group scalars, the same
    on every rank). Shaped like a DTensor ``p`` as a DTensor sharded like it (FSDP2), so that
    distributed checkpoints save and reshard it as they do the stability."""
    if isinstance(init, tuple):
        return torch.tensor(init, dtype=torch.float32, device=local(p).device)
    p = p.detach()
    layout = {} if hasattr(p, "to_local") else {"memory_format": torch.contiguous_format}
    if init == "param":
        return p.to(torch.float32, copy=True, **layout)
    return torch.full_like(p, init, dtype=torch.float32, **layout)


def _check_extra(t: object, what: str, init: float | str | tuple[float, ...], p: Tensor,
                 signed: bool = False) -> None:
    """A loaded extra state tensor (see :func:`fresh_extra`): fp32 and finite, shaped like ``p``
    (a number's fill or a copy of ``p``) or like ``init`` (a vector of per-group scalars);
    nonnegative but for a copy of ``p`` and a ``signed`` state (:attr:`Rule.signed_state`,
    v6's path integral): the rules' other fills are importances, their vectors counters and
    EMAs of norms."""
    shape = (len(init),) if isinstance(init, tuple) else tuple(p.shape)
    check_tensor(t, what, torch.float32, shape, nonnegative=init != "param" and not signed)


def snapshot(entry: Pending, kept: dict[Any, tuple] | None = None,
             on_device: bool = False) -> list[Tensor] | None:
    """Copies of the params' local shards before the base step, if the rule needs them (one
    multi-tensor copy; a copy keeps -0.0 and NaN as they are); on the CPU, and on CUDA with
    ``on_device`` (CUDA graphs: their addresses must not move), kept in ``kept`` between
    steps (:func:`copies`). Otherwise on CUDA the caching allocator reuses the blocks, so
    the snapshot stays transient there (views of one flat buffer allocated per step measured
    slower on the host than one allocation per param: 1.1 against 0.6 ms for BERT-base's
    200 params)."""
    rule = RULES[entry.group[_prefix_of(entry.group) + "rule"]]
    if not rule.snapshot or not entry.params:
        return None
    return copies([local(p) for p in entry.params], kept, id(entry.group), on_device=on_device)


def copies(tensors: list[Tensor], kept: dict[Any, tuple] | None, key: Any,
           dtype: torch.dtype | None = None, owners: list[Tensor] | None = None,
           on_device: bool = False) -> list[Tensor]:
    """Copies of ``tensors`` (cast to ``dtype`` if given).

    On the CPU, with ``kept``, the copies are views of one buffer kept under ``key`` and
    overwritten at the next call with the same tensors: the CPU allocator hands large blocks
    back to the OS and faults them in again, which cost 5 ms a step beside AdamW on a 6M-param
    MLP (docs/results.md). With ``on_device`` the same holds on any device. Elsewhere they are
    fresh tensors. ``owners`` (default: the tensors themselves) are what must stay the same
    for the copies to be reused: the params, for grads that are new tensors at every step."""
    if (kept is None or (tensors[0].device.type != "cpu" and not on_device)
            or len({(t.dtype, t.device) for t in tensors}) != 1):
        fresh = [t.to(dtype) for t in tensors] if dtype is not None else tensors
        return list(torch._foreach_mul(fresh, 1.0))
    # the same tensors (a param keeps its shape and dtype): the same copies
    ids = tuple(map(id, tensors if owners is None else owners))
    held = kept.get(key)
    if held is None or held[0] != ids:
        numels = [t.numel() for t in tensors]
        flat = torch.empty(sum(numels), dtype=dtype or tensors[0].dtype,
                           device=tensors[0].device)
        held = kept[key] = (ids, [v.view(t.shape) for v, t in zip(flat.split(numels), tensors)])
    torch._foreach_copy_(held[1], tensors)
    return held[1]


def _prefix_of(group: dict[str, Any]) -> str:
    return PREFIX if PREFIX + "rule" in group else ""


