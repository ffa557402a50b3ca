"""SWGL around a base optimizer, as one ``torch.optim.Optimizer`` (``SWGL.wrap(base)``): its
``step(closure)`` runs the closure, the rule's first phase, the base's step, then the rule's
second phase. It shares ``param_groups`` with the base, so LR schedulers,
``add_param_group`` and ``zero_grad`` act on both, and its ``state_dict()`` is the base's with
SWGL's tensors under ``swgl_*`` keys.

The fused path. Around ``torch.optim.AdamW`` or ``torch.optim.SGD`` the step may instead be
swgl.optim's fused SWGL + optimizer step (:func:`swgl.optim._base.triton_step`): the same math
in one set of Triton passes, reading and writing the base's own state tensors (``step``,
``exp_avg``, ``exp_avg_sq``; ``momentum_buffer``), made as torch makes them where a param has
none yet, so the base's ``state_dict`` stays torch's and either path can follow the other.
Why: on an H200, BERT-base's step took 1.75x torch's fused AdamW through the phases, 1.64x
through this path (issue 13). It is taken when every condition holds; otherwise the phases run
around the base's step, silently (the reason is logged once at DEBUG on ``swgl.wrapper``):

* the base is exactly ``torch.optim.AdamW`` or ``torch.optim.SGD`` (a subclass may change its
  step), its step neither hooked nor replaced on the instance (whatever did so expects it to
  run), Triton can run (CUDA, or its interpreter);
* per group, read at each step (schedulers and users change them): ``fused`` not False; a
  rule with Triton kernels (``Rule.kernel``; a rule whose kernel is another's and that adds
  work of its own runs it through ``Rule.around_fused_step``, as in swgl.optim: no rule is
  named here); ``mode="update"`` (in ``"grad"`` the phases leave the modulated grads in
  ``.grad``, where the fused step only reads them); fp32 storage; SWGL options the kernels
  implement; the base's options those the kernels implement
  (:data:`swgl.optim.TORCH_BASES`: AdamW's step counters on the device, ``fused=True`` or
  ``capturable=True``, so that a skipped step is not counted with a host sync; SGD without
  dampening; no amsgrad, maximize or differentiable; plain-number hyperparameters);
* per param (checked again whenever the params, their grads' dtypes and layout, or the state
  change): what the kernels take (plain contiguous fp32/bf16/fp16 tensors on one device, the
  base's buffers in the param's dtype or fp32, the base's step counters on that device).

As swgl.optim's, that step waits for the host nowhere and skips itself whole on a non-finite
gradient (params, SWGL's state, the base's state and both step counters), where the phases
hand the base its step as usual; the gradients are read, never modified. With ``cuda_graphs``
it is replayed as one CUDA graph, the lr read from a device scalar set at each step; the graph
keeps every tensor and launch table it reads (:func:`swgl.kernels.hold_plans`), and a base
whose state was replaced (its own ``load_state_dict``) is captured anew.
"""

from __future__ import annotations

import inspect
import logging
import operator
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from swgl import graphs, kernels
from swgl._warn import warn
from swgl.base import (
    PREFIX,
    Pending,
    SWGLBase,
    check_cuda_graphs,
    check_params,
    eager_under_compile,
    run_closure,
    snapshot,
)
from swgl.checkpoint import by_position, check_api, check_state_dict_layout
from swgl.optim import TORCH_BASES
from swgl.optim._base import FusedGroup, TorchBase, set_lrs, triton_plan, triton_step
from swgl.options import MATH_OPTIONS, check_options, group_label, hyper
from swgl.rules import DEFAULT_RULE, RULES

__all__ = ["SWGLWrapper", "wrap"]

log = logging.getLogger(__name__)

_DTYPE = operator.attrgetter("dtype")


def _needs_closure(opt: Optimizer) -> bool:
    """Whether ``opt.step`` requires a closure (``torch.optim.LBFGS`` does)."""
    try:
        closure = inspect.signature(opt.step).parameters.get("closure")
    except (TypeError, ValueError):   # a builtin or otherwise opaque step: assume not
        return False
    return closure is not None and closure.default is inspect.Parameter.empty


class SWGLWrapper(SWGLBase):
    """SWGL around a base optimizer, as one ``torch.optim.Optimizer``.

    Build it with ``SWGL.wrap(base, ...)``, or as ``SWGLWrapper(params, base=torch.optim.AdamW,
    base_kwargs={"lr": 1e-3}, ...)`` (the form HF's ``optimizer_cls_and_kwargs`` uses). The SWGL
    options are those of :class:`SWGL`; in each param group they are stored as ``swgl_alpha``,
    ``swgl_eps``, ... so they never collide with the base optimizer's ``eps`` or ``foreach``.
    Per-group SWGL options are given the same way: ``{"params": ..., "swgl_alpha": 0.9}``.

    ``GradScaler.step(wrapper)`` unscales first and skips the step on overflow, so SWGL only
    ever sees unscaled, finite gradients.
    """

    option_prefix = PREFIX

    def __init__(
        self,
        params: Optimizer | Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        base: type[Optimizer] | None = None,
        base_kwargs: dict[str, Any] | None = None,
        alpha: float | None = None,
        lambda_reg: float | None = None,
        eps: float = 1e-8,
        max_boost: float = 10.0,
        rule: str = DEFAULT_RULE,
        signal: str | None = None,
        mode: str | None = None,
        max_damping: float | None = None,
        shock: float = 0.0,
        consolidation: float | None = None,
        consolidation_horizon: float | None = None,
        storage: str = "fp32",
        foreach: bool = True,
        fused: bool | None = None,
        cuda_graphs: bool | None = None,
    ) -> None:
        check_cuda_graphs(cuda_graphs)
        if isinstance(params, Optimizer):
            if base is not None or base_kwargs is not None:
                raise ValueError("pass either a base optimizer instance or base=/base_kwargs=")
            base_opt = params
        else:
            if not (isinstance(base, type) and issubclass(base, Optimizer)):
                raise TypeError(
                    f"base must be a torch.optim.Optimizer subclass, got {base!r}"
                )
            base_opt = base(params, **(base_kwargs or {}))
        if isinstance(base_opt, SWGLBase):
            raise TypeError("cannot wrap an SWGL optimizer in another SWGL")
        if _needs_closure(base_opt):
            raise TypeError(
                f"cannot wrap {type(base_opt).__name__}: its step needs a closure, which it "
                "re-evaluates (a line search), while SWGL modulates the one gradient of a step; "
                "use the two-object pattern (SWGL(params) beside the optimizer) instead"
            )
        defaults = {
            PREFIX + k: v
            for k, v in dict(
                rule=rule, alpha=alpha, lambda_reg=lambda_reg, eps=eps, max_boost=max_boost,
                signal=signal, mode=mode, max_damping=max_damping, shock=shock,
                consolidation=consolidation, consolidation_horizon=consolidation_horizon,
                storage=storage, foreach=foreach, fused=fused,
            ).items()
        }
        check_options(dict(defaults), PREFIX)
        self.base = base_opt
        self.cuda_graphs = cuda_graphs
        self._warned_fresh = False
        #: another wrapper of this base came first (its SWGL state stays with it)
        self._wrapped_before = bool(_filled(base_opt))
        self._sharing_groups = False
        self._kept_snapshots: dict[Any, tuple] = {}  # CPU: see base.snapshot
        #: the fused path (module docstring): what this step takes (None: the phases), the key
        #: its per-param check ran under with its outcome, the reason last logged
        self._stepping: TorchBase | None = None
        self._fused_checked: tuple[Hashable, str | None] = (None, "not checked")
        self._fused_why: str | None = None
        #: per param group (by id), its lr as a device scalar the graphed kernels read
        self._lr: dict[int, Tensor] = {}
        #: per device, the count SGD's kernels read (see :meth:`_fused_groups`)
        self._not_first: dict[torch.device, Tensor] = {}
        #: whether this step's kernels read the lr from ``_lr`` (set this step: graphs may run)
        self._lr_live = False
        #: the base's state as last seen: its own load_state_dict replaces it (new tensors)
        self._base_state_seen = base_opt.state
        # The options an earlier wrapper of this base filled into the shared groups were its
        # defaults, not the user's: this wrapper's apply instead (a re-run notebook cell).
        filled = _filled(base_opt)
        for group in base_opt.param_groups:
            for key in filled.pop(id(group), ()):
                group.pop(key, None)
            filled[id(group)] = {key for key in defaults if key not in group}
        # With the base's defaults: OneCycleLR and CyclicLR look for momentum/betas there.
        super().__init__(base_opt.param_groups, {**base_opt.defaults, **defaults})
        self._sharing_groups = True
        # Share the groups themselves: schedulers and add_param_group then act on both.
        self.param_groups = base_opt.param_groups
        for index, group in enumerate(self.param_groups):
            self._check_bare(group, index)
            self._check_group(group, defaults, index)

    _REBUILT = (*SWGLBase._REBUILT, "_stepping", "_fused_checked", "_fused_why", "_lr",
                "_not_first", "_lr_live", "_base_state_seen")

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A copy shares its copied base's groups (one memo copies both) and checks the
        fused path again."""
        super().__setstate__(state)
        self._stepping, self._fused_checked, self._fused_why = None, (None, "not checked"), None
        self._lr, self._not_first, self._lr_live = {}, {}, False
        self._base_state_seen = self.base.state

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not self._sharing_groups:  # Optimizer.__init__ copying the base's groups
            super().add_param_group(param_group)
            return
        self._check_bare(param_group, len(self.param_groups))  # before the base takes it
        self.base.add_param_group(param_group)
        self._check_group(self.param_groups[-1], self.defaults, len(self.param_groups) - 1)

    def _check_bare(self, group: dict[str, Any], index: int) -> None:
        """An SWGL option without the prefix is a key the base ignores: it would do nothing."""
        bare = sorted(k for k in set(group) & set(MATH_OPTIONS) if k not in self.base.defaults)
        if bare:
            raise ValueError(
                f"param group {index} has SWGL option(s) {bare} without the {PREFIX!r} prefix, "
                f"which {type(self.base).__name__} would ignore; name them {PREFIX}<option> "
                "(swgl.groups.param_groups(..., for_wrapper=True) does)"
            )

    def _check_group(self, group: dict[str, Any], defaults: dict[str, Any], index: int) -> None:
        filled = _filled(self.base).setdefault(id(group), set())
        for key, value in defaults.items():
            if key not in group:
                group[key] = value
                if key.startswith(PREFIX):
                    filled.add(key)
        check_options(group, PREFIX, label=group_label(index),
                      warn_deprecated=group[PREFIX + "shock"] != defaults[PREFIX + "shock"])
        check_params(group)
        self._checked(group)

    def _share_base_groups(self) -> None:
        """Point at the base's (new) groups; the records of the groups gone go with them (a
        new group dict may take a dead one's id)."""
        self.param_groups = self.base.param_groups
        self._state_version += 1
        filled, live = _filled(self.base), {id(group) for group in self.param_groups}
        for key in [key for key in filled if key not in live]:
            del filled[key]

    def _follow_base_groups(self) -> None:
        """Keep sharing the base's groups when they were changed on the base itself: its own
        ``load_state_dict`` makes new group dicts (a scheduler stepping the wrapper's old ones
        would no longer reach the base), its own ``add_param_group`` adds one without SWGL's
        options (they get this wrapper's defaults, as :meth:`add_param_group` gives them)."""
        if self.param_groups is not self.base.param_groups:
            self._share_base_groups()
        for index, group in enumerate(self.param_groups):
            if PREFIX + "rule" not in group:
                self._check_bare(group, index)
                self._check_group(group, self.defaults, index)

    def _on_fresh_state(self, p: Tensor) -> None:
        if not self._warned_fresh and self.base.state.get(p):
            self._warned_fresh = True
            why = ("another SWGL.wrap of this base optimizer came first and keeps its SWGL "
                   "state (wrap a base once)" if self._wrapped_before else
                   "a checkpoint without SWGL state?")
            warn(
                f"the base optimizer has state for a param SWGL has never seen ({why}); "
                "SWGL's stability estimates start from scratch"
            )

    @eager_under_compile
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Run ``closure`` (forward and backward), modulate the grads, then step the base; or,
        where every condition holds, the fused step on the base's state (module docstring)."""
        loss = run_closure(closure)
        self._follow_base_groups()
        if self.base.state is not self._base_state_seen:   # replaced: no graph may replay
            self._base_state_seen = self.base.state         # onto the old state's tensors
            self._state_version += 1
        self._stepping = self._fused_base()
        if self._stepping is not None:
            self._lr_live = self._graphs_possible()
            if self._lr_live:
                set_lrs(self._lr, self.param_groups)
            if self._run_before(self._fused_step):
                return loss
            self._stepping = None   # it found a tensor the kernels do not take: the phases
        pending = self._run_before(self._before_phase)
        self.base.step()
        if pending:
            self._run_after([entry for entry, _ in pending], [snaps for _, snaps in pending])
        return loss

    def _before_phase(self) -> list[tuple[Pending, list[Tensor] | None]]:
        _, pending = self._modulate()
        keep = self._keeps_snapshots()
        return [(entry, snapshot(entry, self._kept_snapshots, keep)) for entry in pending]

    # -- the fused path (module docstring) ----------------------------------------------------

    def _fused_base(self) -> TorchBase | None:
        """What the fused step needs of the base this step, or None where a condition fails:
        the options are checked at each step, the params and state once per key
        (:meth:`_fused_key`)."""
        torch_base = TORCH_BASES.get(type(self.base))
        if torch_base is None or not kernels.triton_available():
            return None
        # options set by hand since the last step are checked as the phases check them (the
        # fused step runs no phase), and before the per-param check below makes any state
        for index, group in enumerate(self.param_groups):
            self._recheck(index, group)
        why = self._fused_options_blocker(torch_base)
        if why is None:
            key = self._fused_key(torch_base)
            if key != self._fused_checked[0]:
                self._fused_checked = (key, self._fused_params_blocker(torch_base))
            why = self._fused_checked[1]
        if why != self._fused_why:
            self._fused_why = why
            if why is not None:
                log.debug("swgl: the wrapper steps %s through the phases: %s",
                          type(self.base).__name__, why)
        return torch_base if why is None else None

    def _fused_options_blocker(self, torch_base: TorchBase) -> str | None:
        """Why an option keeps the fused step off this step, or None."""
        base = self.base
        if base._optimizer_step_pre_hooks or base._optimizer_step_post_hooks:
            return "the base optimizer has step hooks"
        if "step" in vars(base):
            return "the base optimizer's step was replaced on the instance"
        for index, group in enumerate(self.param_groups):
            name = group[PREFIX + "rule"]
            rule = RULES[name]
            if group[PREFIX + "fused"] is False:
                why = "fused=False"
            elif rule.kernel is None:
                why = f"rule {name!r} has no kernel"
            elif group[PREFIX + "mode"] != "update":
                why = "mode 'grad' hands the base the modulated grads in .grad"
            elif group[PREFIX + "storage"] != "fp32":
                why = f"storage {group[PREFIX + 'storage']!r}"
            elif not kernels.supports(rule.hyper(hyper(group, PREFIX))):
                why = "an SWGL option the kernels do not implement"
            else:
                why = torch_base.blocker(group)
            if why is not None:
                return f"param group {index}: {why}"
        return None

    def _fused_key(self, torch_base: TorchBase) -> tuple:
        """What :meth:`_fused_params_blocker` reads that can change between steps: which params
        have grads, the params' addresses, the grads' dtypes and layouts, the state's version
        and size, the buffers a group has and where fresh counters would live."""
        parts: list[Any] = [self._state_version, len(self.state), len(self.base.state)]
        for group in self.param_groups:
            grads = [p.grad for p in group["params"] if p.grad is not None]
            parts += graphs.params_key(group["params"])
            parts += (tuple(map(_DTYPE, grads)), tuple(map(Tensor.is_contiguous, grads)),
                      torch_base.buffer_keys(group), group.get("fused"), group.get("capturable"))
        return tuple(parts)

    def _fused_params_blocker(self, torch_base: TorchBase) -> str | None:
        """Why a param or a state tensor keeps the fused step off, or None. Makes the state a
        param has not yet (SWGL's, and the base's as torch makes it at its first step), which
        either path then steps."""
        groups, counters = self._fused_groups(torch_base, lrs=False)
        if not groups:
            return None
        if triton_plan(groups) is None:
            return ("a param, grad or state tensor the kernels do not take (contiguous "
                    "fp32/bf16/fp16 on one device of theirs; the buffers fp32 or the param's "
                    "dtype)")
        device = groups[0].params[0].device
        if any(t.device != device for t in counters):
            return "a step counter of the base lives on another device"
        return None

    def _fused_groups(self, torch_base: TorchBase, lrs: bool
                      ) -> tuple[list[FusedGroup], list[Tensor]]:
        """The groups with grads as the fused step takes them, on SWGL's state and the base's
        (made where missing), and the step counters it counts: SWGL's and the base's.
        ``lrs``: the kernels read each group's lr from its device scalar (``_lr``, set this
        step), else the group's number."""
        out: list[FusedGroup] = []
        counters: list[Tensor] = []
        for group in self.param_groups:
            params, grads, stabilities, steps, extra = self._gather(group)
            if not params:
                continue
            keys = torch_base.buffer_keys(group)
            states = [self._base_state(p, group, torch_base, keys) for p in params]
            if torch_base.counter is None:
                # torch's SGD keeps no counter; the kernels take its first step (b = d) at a
                # count of 1, which a zero buffer without dampening steps alike: never 1 here
                device = params[0].device
                if device not in self._not_first:
                    self._not_first[device] = torch.full((), 2.0, device=device)
                reads = [self._not_first[device]] * len(params)
            else:
                reads = [state[torch_base.counter] for state in states]
                counters += reads
            counters += steps
            rule = group[PREFIX + "rule"]
            out.append(FusedGroup(
                rule, RULES[rule].hyper(hyper(group, PREFIX)), torch_base.kernel_args(group),
                self._lr[id(group)] if lrs else None, params, grads, stabilities, reads,
                [[state[key] for state in states] for key in keys], extra))
        return out, counters

    def _base_state(self, p: Tensor, group: dict[str, Any], torch_base: TorchBase,
                    keys: tuple[str, ...]) -> dict[str, Tensor]:
        """The base's state of ``p``, with what torch would make at its first step where
        missing or None (an old torch's SGD kept ``momentum_buffer: None`` without momentum;
        none at all for SGD without momentum, as torch)."""
        state = self.base.state.get(p)
        needed = (*keys, torch_base.counter) if torch_base.counter else keys
        if state is None or any(state.get(key) is None for key in needed):
            fresh = torch_base.init_state(p, group)
            if not fresh:
                return {}
            state = self.base.state[p]
            for key, value in fresh.items():
                if state.get(key) is None:
                    state[key] = value
            self._state_version += 1
        return state

    def _fused_step(self) -> bool:
        """The fused step over every group (:func:`swgl.optim._base.triton_step`); False, with
        nothing done, where the kernels do not take a tensor after all (the per-param check
        ran under this step's key: a state tensor replaced by hand), which the next step
        checks anew. Under a CUDA graph's capture, what the kernels read outside their launch
        tables is kept as long as the graph (:func:`swgl.kernels.hold`)."""
        groups, counters = self._fused_groups(self._stepping, self._lr_live)
        if not groups:
            return True
        plan = triton_plan(groups)
        if plan is None:
            self._fused_checked = (None, "not checked")
            return False
        kernels.hold(groups, counters)
        triton_step(groups, plan, self._stepping.opt, counters)
        return True

    def _graph_key(self) -> tuple | None:
        """The phases' key; for the fused step also the base's state size, the addresses of its
        state tensors (the graph reads them: one put in by hand must not be skipped by a
        replay that still steps the old one) and its options (but the lr, a device scalar:
        :func:`swgl.optim._base.set_lrs`)."""
        key = super()._graph_key()
        if key is None or self._stepping is None:
            return key
        kernel_args = self._stepping.kernel_args
        state = self.base.state
        buffers = tuple(v.data_ptr() for group in self.param_groups for p in group["params"]
                        for v in state.get(p, {}).values() if isinstance(v, Tensor))
        return (*key, "fused", len(state), buffers,
                *(tuple((k, v) for k, v in kernel_args(group).items() if k != "lr")
                  for group in self.param_groups))

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    def train(self) -> None:
        """Forward to the base optimizer's ``train()`` (schedule-free optimizers have one)."""
        if hasattr(self.base, "train"):
            self.base.train()

    def eval(self) -> None:
        """Forward to the base optimizer's ``eval()``."""
        if hasattr(self.base, "eval"):
            self.base.eval()

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state_dict with SWGL's tensors under ``swgl_*`` keys."""
        out = self.base.state_dict()
        for index, entry in self._swgl_state_dict().items():
            # A new dict per param: the base's state_dict shares its live per-param dicts.
            out["state"][index] = {
                **out["state"].get(index, {}), **{PREFIX + k: v for k, v in entry.items()}
            }
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a ``state_dict()``: the base gets its keys, SWGL its ``swgl_*`` keys."""
        check_state_dict_layout(state_dict, self.param_groups)
        check_api(state_dict, PREFIX)
        base_state: dict[int, dict[str, Any]] = {}
        swgl_state: dict[int, dict[str, Any]] = {}
        for index, entry in state_dict["state"].items():
            if not isinstance(entry, dict):
                kind = type(entry).__name__
                raise ValueError(f"state entry {index!r} must be a dict, got {kind}")
            ours = {k[len(PREFIX):]: v for k, v in entry.items() if k.startswith(PREFIX)}
            theirs = {k: v for k, v in entry.items() if not k.startswith(PREFIX)}
            if ours:
                swgl_state[index] = ours
            if theirs:
                base_state[index] = theirs
        saved = by_position(swgl_state, state_dict["param_groups"])
        saved_groups = self._saved_groups(state_dict)
        self._check_swgl_state(saved, saved_groups)
        if base_state and not swgl_state:
            warn(
                "this checkpoint holds base-optimizer state but no SWGL state (no swgl_* keys); "
                "SWGL's stability estimates restart from scratch"
            )
            self._warned_fresh = True
        self.base.load_state_dict({"state": base_state, "param_groups": state_dict["param_groups"]})
        self._share_base_groups()
        # torch's groups are the checkpoint's: a plain torch optimizer's has no SWGL options,
        # which then stay the wrapper's
        for group, merged in zip(self.param_groups, saved_groups):
            for key, value in merged.items():
                if key.startswith(PREFIX):
                    group.setdefault(key, value)
        self._install_swgl_state(saved)

    def __repr__(self) -> str:
        return f"SWGLWrapper(base={self.base!r})"


def _filled(base: Optimizer) -> dict[int, set[str]]:
    """Per group of ``base`` (by id), the SWGL options a wrapper filled in from its defaults
    (kept on the base, which outlives a wrapper)."""
    return base.__dict__.setdefault("_swgl_filled", {})


def wrap(base: Optimizer, **options: Any) -> SWGLWrapper:
    """Wrap ``base`` so that ``step(closure)`` modulates and then steps it."""
    if not isinstance(base, Optimizer):
        raise TypeError(f"base must be a torch.optim.Optimizer instance, got {type(base).__name__}")
    return SWGLWrapper(base, **options)


