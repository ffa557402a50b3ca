"""What the fused SWGL optimizers share: options, state, the guard and the two paths.

A step takes one of two paths, chosen per call:

* **Triton** (``fused=None`` on CUDA with Triton, or ``fused=True``): every param of every
  group must be a contiguous CUDA tensor on one device (fp32/bf16/fp16, fp32 state). The
  non-finite check writes a flag on the device that every later kernel reads, and the step
  counters are bumped by ``1 - found_inf`` on the device, so the step never syncs with the
  host. Launches per step, whatever the number of params: about five for v1, eight for v2;
  for v4 three Triton passes (:mod:`swgl.kernels.triton_importance_optim`) and about twenty
  small ops on device scalars (the step counters, ``k`` and ``rho``); v5 and the default,
  v6 (:data:`swgl.rules.DEFAULT_RULE`), add their detector (its signal summed in v4's first
  pass, its step one small kernel), their consolidation (kernels that exit at once but at a
  shift) and their pull (one pass, which for v6 also sums SI's path, after a copy of the
  params; :func:`swgl.rules.consolidation.around_fused_step`,
  :func:`swgl.rules.synaptic.around_fused_step`).
  For v4 to v7 the whole step is then replayed as one CUDA graph (:mod:`swgl.graphs`,
  ``cuda_graphs``): the kernels read each group's lr from a device scalar set at each step.
* **foreach** (everything else): the same math through ``torch._foreach_*``. Bias
  corrections come from the step counters on their device. On CUDA, with a rule that
  honours a device flag (v2 to v6), the non-finite guard is that flag and a masked commit,
  so this path never syncs either; elsewhere it is one host read
  (:func:`swgl.functional.all_finite`).

On either path a non-finite gradient anywhere skips the whole step: params, optimizer state,
SWGL state and step counters are left as they were. Gradients are only read, never modified.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from swgl import graphs, kernels
from swgl.base import (
    check_cuda_graphs,
    check_params,
    copied_state,
    copies,
    eager_under_compile,
    fresh_extra,
    run_closure,
)
from swgl.functional import all_finite, found_nonfinite
from swgl.kernels import compiled
from swgl.options import DEFAULTS, check_options, check_rule_change
from swgl.options import hyper as group_hyper
from swgl.rules import RULES, Context, Hyper
from swgl.stats import DEFAULT_QUANTILES, layer_stats
from swgl.stats import shifts as detector_shifts

#: The ``swgl=`` options: the math options of :class:`swgl.SWGL`, with its defaults.
SWGL_DEFAULTS: dict[str, Any] = dict(DEFAULTS)


def _check_names(options: Any, name: str, *, full: bool) -> None:
    """``options`` is a dict of known SWGL options (``full``: of every one); ``name`` is what
    messages call it."""
    if not isinstance(options, dict):
        raise TypeError(f"{name} must be a dict of SWGL options, got {type(options).__name__}")
    unknown = sorted(set(options) - set(SWGL_DEFAULTS))
    if unknown:
        raise ValueError(f"{name} has unknown options {unknown}; known: {sorted(SWGL_DEFAULTS)}")
    missing = sorted(set(SWGL_DEFAULTS) - set(options)) if full else []
    if missing:
        raise ValueError(f"{name} lacks the options {missing}")


def check_swgl(options: Any, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Validate an ``swgl=`` dict (merged over ``base`` or the defaults); return a full copy.

    The checks are :class:`swgl.SWGL`'s (:func:`swgl.options.check_options`).
    """
    _check_names(options, "swgl", full=False)
    base = base or SWGL_DEFAULTS
    if options.get("rule", base["rule"]) != base["rule"]:
        # another rule: what was resolved for the old one (mode, signal) starts unset again
        base = {**SWGL_DEFAULTS, **{k: base[k] for k in ("alpha", "lambda_reg", "eps",
                                                         "max_boost")}}
    checked = {**base, **options}
    check_options(checked, math_only=True, label="swgl['{}']")
    return checked


def recheck_swgl(options: Any, name: str) -> None:
    """Validate again, in place, a param group's full ``swgl`` dict, which a user may have
    changed since it was checked (``name``, e.g. ``"param_groups[0]['swgl']"``, in messages).
    A changed ``rule`` is checked with the other options as they stand: an option the new
    rule does not read must be set to None by hand."""
    _check_names(options, name, full=True)
    check_options(options, math_only=True, label=name + "['{}']")


def hyper(options: dict[str, Any]) -> Hyper:
    """The rule's options, as its variants read them."""
    return RULES[options["rule"]].hyper(group_hyper(options))


def check_fused(fused: Any) -> bool | None:
    if fused is not None and not isinstance(fused, bool):
        raise TypeError(f"fused must be None or a bool, got {fused!r}")
    if fused and not kernels.triton_available():
        raise RuntimeError(
            "fused=True needs a CUDA device and Triton (pip install triton); without them pass "
            "fused=None, which takes the foreach path (on the CPU, for large params under "
            "v4 to v7, the compiled one)")
    return fused


def bias_correction(steps: Tensor, beta: float) -> Tensor:
    """``1 - beta^t`` per step counter, in fp64 (as the kernels: beta near 1 loses nothing to
    cancellation), on the counters' device."""
    return 1.0 - torch.pow(beta, steps.double())


def _guard_on_device(work) -> bool:
    """The foreach path's non-finite guard: a device flag and masked commits when every param
    is on CUDA and every rule honours the flag (reading a flag there would sync the stream);
    elsewhere one host read, which costs less than the masked copies."""
    return all(p.is_cuda for _, lists in work for p in lists[0]) and all(
        RULES[group["swgl"]["rule"]].device_guard for group, _ in work)


def _compiles_on_cpu(work) -> bool:
    """The CPU takes the rules' compiled variants (:mod:`swgl.kernels.compiled`) as
    ``SWGL(fused=None)`` does: every group's rule has them and its ``fused`` is not False,
    and the params are large enough to repay the compile."""
    params = [p for _, lists in work for p in lists[0]]
    return all(
        RULES[group["swgl"]["rule"]].cpu_fused and group["fused"] is not False
        and kernels.supports(hyper(group["swgl"])) for group, _ in work
    ) and compiled.runs_on(params[0].device) and (
        compiled.worth_it(params) or all(group["fused"] for group, _ in work))


def _restore(found: Tensor, outs: list[list[Tensor]], saved: list[list[Tensor]]) -> None:
    """``out = saved`` where ``found`` is set: a skipped step leaves no trace (no host sync)."""
    ok = (found == 0).reshape(())
    for xs, olds in zip(outs, saved):
        for x, old in zip(xs, olds):
            torch.where(ok.to(x.device), x, old, out=x)


class FusedGroup(NamedTuple):
    """A param group as the fused step takes it (:func:`triton_plan`, :func:`triton_step`)."""

    rule: str
    hp: Hyper
    #: the optimizer's hyperparameters as the kernels take them (``kernel_args``)
    args: dict[str, Any]
    #: the lr as a device scalar the kernels read (CUDA graphs: set at each step), or None
    lr: Tensor | None
    params: list[Tensor]
    grads: list[Tensor]
    stabilities: list[Tensor]
    #: per param, the step count the kernels read (counted for this step when they run)
    steps: list[Tensor]
    buffers: list[list[Tensor]]
    #: the rule's other state tensors by name (v5's)
    extras: dict[str, list[Tensor]]


class TorchBase(NamedTuple):
    """How the fused step stands in for a torch optimizer's (:class:`swgl.SWGLWrapper`
    around ``torch.optim.AdamW`` or ``SGD``), on the torch optimizer's own state."""

    #: the kernels' optimizer id
    opt: int
    #: a param group's buffer keys in the optimizer's state, in kernel order
    buffer_keys: Callable[[dict[str, Any]], tuple[str, ...]]
    #: a param group's hyperparameters as the kernels take them
    kernel_args: Callable[[dict[str, Any]], dict[str, Any]]
    #: why the kernels cannot stand in for the optimizer's step on a param group, or None
    blocker: Callable[[dict[str, Any]], str | None]
    #: the state torch makes at a param's first step (the buffers, and ``counter``)
    init_state: Callable[[Tensor, dict[str, Any]], dict[str, Tensor]]
    #: the state key of the optimizer's step counter, or None where it keeps none
    counter: str | None


def plain_numbers(**values: Any) -> str | None:
    """Which of ``values`` (a torch param group's hyperparameters) is not a plain number, or
    None: the kernels take Python floats (a Tensor lr is torch's, for its own graphs)."""
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{name} is a {type(value).__name__}, not a float"
    return None


def triton_plan(groups: list[FusedGroup]) -> list[list[list[int]]] | None:
    """Per group, the index lists of its launch groups; None when the kernels cannot take
    every tensor (one device of theirs, contiguous, fp32/bf16/fp16, the buffers fp32 or the
    param's dtype), every rule, or its options. Reused while the tensors are alike."""
    device = groups[0].params[0].device
    if not kernels.runs_on(device):
        return None
    plan = []
    for g in groups:
        launch_groups, rest = kernels.cached_plan(
            "optim.split", [g.params, g.stabilities, *g.buffers], [g.grads],
            functools.partial(kernels.split, g.params, g.grads, g.stabilities,
                              buffers=g.buffers))
        if (rest or RULES[g.rule].kernel is None or not kernels.supports(g.hp)
                or any(key[0] != device for key in launch_groups)):
            return None
        plan.append(list(launch_groups.values()))
    return plan


def triton_step(groups: list[FusedGroup], plan: list[list[list[int]]], opt: int,
                counters: list[Tensor]) -> None:
    """One step of the rules fused with the optimizer ``opt`` over every group, on the device
    with no host sync (the module docstring): swgl.optim's Triton path, and the wrapper's
    around torch's AdamW / SGD. ``counters`` (device step counters) are counted
    ``1 - found`` before the kernels read the groups' ``steps``. Triton launches on the
    current CUDA device: the params' device is made current for the step (a launch on another
    device than its tensors' would fault)."""
    device = groups[0].params[0].device
    if device.type != "cuda":
        _triton_step(groups, plan, opt, counters)
        return
    with torch.cuda.device(device):
        _triton_step(groups, plan, opt, counters)


def _triton_step(groups: list[FusedGroup], plan: list[list[list[int]]], opt: int,
                 counters: list[Tensor]) -> None:
    from swgl.kernels import triton_importance_optim as V4
    from swgl.kernels import triton_swgl as K

    ctx = Context()
    found = torch.zeros(1, dtype=torch.float32, device=groups[0].params[0].device)
    plans = []
    # the first pass of every launch group sets the flag, before any later pass reads it
    for g, launches in zip(groups, plan):
        rule = RULES[g.rule].kernel
        runs = []
        for idx in launches:
            _, _, (lau,) = kernels.launches_for(
                "optim", [[xs[i] for i in idx]
                          for xs in (g.params, g.grads, g.stabilities, *g.buffers)], (1,))
            if rule == "v2":
                first = K.v2_weight_sums(lau, ctx, found)
            elif rule == "v4":
                # partial sums of the new EMA (and for v5 of its detector's capped g^2)
                first = V4.check(lau, g.hp, found,
                                 g2=RULES[g.rule].around_fused_step is not None)
            else:
                first = None
                K.nonfinite(lau, found)
            runs.append((lau, [g.steps[i] for i in idx], first))
        plans.append((g, rule, runs))
    torch._foreach_add_(counters, 1.0)
    # a list of 0-d device tensors: the Tensor-scalar overload would sync to read it
    torch._foreach_sub_(counters, [found.reshape(())] * len(counters))
    for g, rule, runs in plans:
        for lau, steps, _ in runs:
            lau.steps = torch.stack(steps)
        if rule == "v4":  # one k and one rho over the whole param group (v4, v5)
            args = g.args if g.lr is None else {**g.args, "lr": g.lr}
            around = RULES[g.rule].around_fused_step
            v4_step = functools.partial(
                V4.step, [lau for lau, _, _ in runs], [first for _, _, first in runs],
                sum(p.numel() for p in g.params), g.hp, found, opt=opt, **args)
            if around is None:
                v4_step()
            else:   # v5: its detector, consolidation and pull around v4's step
                around(g.params, g.grads, {"stability": g.stabilities, **g.extras}, g.hp, found,
                       v4_step, V4.g2_sum([first for _, _, first in runs]))
            continue
        for lau, _, sumsq in runs:
            sums = K.v2_ema(lau, g.hp, ctx, sumsq, found) if sumsq is not None else None
            K.step(lau, rule, g.hp, ctx, sums=sums, found=found, opt=opt, mode=g.hp.mode,
                   **g.args)


def set_lrs(lrs: dict[int, Tensor], param_groups) -> None:
    """Each group's lr into its device scalar in ``lrs`` (by the group's id; made on the
    group's first param's device): outside any graph, so that a replay reads the scheduler's
    value of this step."""
    for group in param_groups:
        lr = lrs.get(id(group))
        if lr is None:
            device = next(p.device for p in group["params"]) if group["params"] else None
            if device is None:
                continue
            lr = lrs[id(group)] = torch.zeros(1, device=device)
        lr.fill_(group["lr"])


class SWGLOptimizer(Optimizer):
    """Base class: subclasses name their buffers and implement the two update paths."""

    #: what :func:`swgl.stats.find_swgl` looks for
    is_swgl = True
    #: optimizer-state keys of the fp32 buffers shaped like the param, in kernel order
    buffer_keys: tuple[str, ...] = ()
    #: the kernels' optimizer id (see :mod:`swgl.kernels.triton_swgl`)
    kernel_opt: int = 0

    def __init__(self, params, defaults: dict[str, Any], swgl: dict[str, Any] | None,
                 fused: bool | None, cuda_graphs: bool | None = None) -> None:
        check_cuda_graphs(cuda_graphs)
        defaults = {**defaults, "swgl": check_swgl(swgl or {}), "fused": check_fused(fused)}
        #: per param group (by index), its ``swgl`` dict as last checked (:meth:`_recheck`)
        self._swgl_checked: dict[int, dict[str, Any]] = {}
        super().__init__(params, defaults)
        self._kept: dict[Any, tuple] = {}  # the CPU's working copies (base.copies)
        self.cuda_graphs = cuda_graphs
        self._graphs: graphs.GraphedPhases | None = None
        #: bumped whenever state tensors are made or replaced (a graph reads the old ones)
        self._state_version = 0
        #: per param group (by id), its lr as a device scalar, which the graphed kernels read
        self._lr: dict[int, Tensor] = {}
        #: whether this step's kernels read the lr from ``_lr`` (set this step: graphs may run)
        self._lr_live = False

    #: what a copy does not take: kept buffers, CUDA graphs, device lrs keyed by group ids
    _REBUILT = ("_kept", "_graphs", "_lr", "_lr_live")

    def __getstate__(self) -> dict[str, Any]:
        return copied_state(self, self._REBUILT)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._kept, self._graphs, self._lr, self._lr_live = {}, None, {}, False

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        # a copy per group, as torch's groups hold their own values: changing one group's
        # options leaves the others and the defaults alone
        param_group["swgl"] = check_swgl(param_group.get("swgl", {}), self.defaults["swgl"])
        if "fused" in param_group:
            param_group["fused"] = check_fused(param_group["fused"])
        super().add_param_group(param_group)
        try:
            check_params(self.param_groups[-1])
        except TypeError:
            self.param_groups.pop()   # a refused group leaves the optimizer as it was
            raise
        index = len(self.param_groups) - 1
        self._swgl_checked[index] = dict(self.param_groups[index]["swgl"])

    def _recheck(self) -> None:
        """Validate again each group's ``swgl`` dict that changed since its last check (a
        user may set ``param_groups[i]["swgl"][name]`` between steps): one comparison of a
        few scalars per group and step, whatever the number of params."""
        for index, group in enumerate(self.param_groups):
            options, seen = group["swgl"], self._swgl_checked.get(index)
            if seen != options:
                recheck_swgl(options, f"param_groups[{index}]['swgl']")
                if seen is not None:   # a rule changed after a step is refused
                    check_rule_change(seen["rule"], options["rule"], group["params"],
                                      self.state, f"param_groups[{index}]['swgl']")
                self._swgl_checked[index] = dict(options)

    def group_buffer_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return self.buffer_keys

    def shifts(self) -> list[dict[str, int] | None]:
        """Per param group, what its shift detector has seen: :func:`swgl.stats.shifts`."""
        return detector_shifts(self.param_groups, self.state, key="swgl_detector")

    def _option(self, group: dict[str, Any], name: str) -> Any:
        """A group's SWGL option, as :func:`swgl.stats.layer_stats` reads it."""
        return group["swgl"][name]

    def stability(self, p: Tensor) -> Tensor:
        """``p``'s stability EMA (fp32; its state ``swgl_stability``), as
        :meth:`swgl.SWGL.stability`."""
        state = self.state.get(p)
        if state and "swgl_stability" in state:
            return state["swgl_stability"]
        if not any(q is p for group in self.param_groups for q in group["params"]):
            raise KeyError("this tensor is not one of the optimizer's params")
        raise KeyError("this param has no SWGL state yet (no step taken)")

    def stats(self, names: Any = None, quantiles: tuple[float, ...] | None = None):
        """Per-layer summaries of the stability state, as :meth:`swgl.SWGL.stats`
        (:func:`swgl.stats.layer_stats`). ``names`` is a model or an iterable of
        ``(name, param)`` used to label the layers."""
        return layer_stats(self, names, DEFAULT_QUANTILES if quantiles is None else quantiles)

    # -- state ---------------------------------------------------------------------------------

    def _gather(self, group: dict[str, Any]):
        params, grads, stabilities, steps = [], [], [], []
        keys = self.group_buffer_keys(group)
        buffers: list[list[Tensor]] = [[] for _ in keys]
        # the rule's other state tensors (v5's), as state["swgl_<name>"]
        extra_state = RULES[group["swgl"]["rule"]].state[1:]
        extras: dict[str, list[Tensor]] = {name: [] for name, _ in extra_state}
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise TypeError(f"{type(self).__name__} does not support sparse gradients")
            state = self.state[p]
            if "step" not in state:
                self._state_version += 1
                init = RULES[group["swgl"]["rule"]].init_value
                device = p.device if p.is_cuda else torch.device("cpu")
                state["step"] = torch.zeros((), dtype=torch.float32, device=device)
                state["swgl_stability"] = torch.full_like(
                    p, init, dtype=torch.float32, memory_format=torch.contiguous_format
                )
            for key, out in zip(keys, buffers):
                if key not in state:
                    state[key] = torch.zeros_like(
                        p, dtype=torch.float32, memory_format=torch.contiguous_format
                    )
                out.append(state[key])
            for name, init in extra_state:
                key = "swgl_" + name
                if key not in state:
                    state[key] = fresh_extra(p, init)
                extras[name].append(state[key])
            params.append(p)  # the step runs under no_grad: no detached copy needed
            grads.append(p.grad)
            stabilities.append(state["swgl_stability"])
            steps.append(state["step"])
        return params, grads, stabilities, steps, buffers, extras

    # -- step ----------------------------------------------------------------------------------

    @eager_under_compile
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One step; on CUDA, replayed as a CUDA graph where :mod:`swgl.graphs` allows (the
        Triton path of v4 to v7: the kernels read each group's lr from a device scalar, so
        an LR scheduler does not force a new capture). A group's ``swgl`` options changed
        since the last step are validated first (ValueError or TypeError naming the group
        and the option)."""
        self._recheck()
        loss = run_closure(closure)
        key = self._graph_key()
        self._lr_live = key is not None   # (while graphs are on, a step that may not run as
        # one reads the group's lr, not a device scalar it did not set)
        if self._graphs is None:
            if key is None and not self.cuda_graphs:
                self._step()
                return loss
            self._graphs = graphs.GraphedPhases(required=bool(self.cuda_graphs))
        owners = []
        if key is not None:
            owners = graphs.grad_owners(self.param_groups)
            set_lrs(self._lr, self.param_groups)
        self._graphs.run_before(key, owners, self._step, self._graph_blocker)
        return loss

    def _step(self) -> None:
        work = [(group, self._gather(group)) for group in self.param_groups]
        work = [(group, lists) for group, lists in work if lists[0]]
        if not work:
            return
        plan = self._triton_plan(work)
        if plan is not None:
            groups = self._fused_groups(work)
            kernels.hold(groups)   # under a capture: kept as long as its graph
            triton_step(groups, plan, self.kernel_opt, [t for g in groups for t in g.steps])
        else:
            self._foreach_step(work)

    # -- CUDA graphs (swgl.graphs) -------------------------------------------------------------

    def _graph_key(self) -> tuple | None:
        """What the step's Python reads that can change between steps, but the lr (a device
        scalar, :func:`set_lrs`), or None when graphs are off."""
        if not graphs.possible(self.cuda_graphs, self._graphs, self.param_groups):
            return None
        parts: list[Any] = [self._state_version, len(self.state)]
        for group in self.param_groups:
            parts += graphs.params_key(group["params"])
            args = {k: v for k, v in self.kernel_args(group).items() if k != "lr"}
            parts.append((tuple(args.items()), group["fused"], tuple(group["swgl"].items())))
        return tuple(parts)

    def _graph_blocker(self) -> str | None:
        """Why the step cannot be captured now, or None: it must take the Triton path, under
        a rule whose kernels read the lr on the device (v4 to v7), on the current device."""
        if not torch.cuda.is_available():
            return "CUDA is not available"
        work = [(group, self._gather(group)) for group in self.param_groups]
        work = [(group, lists) for group, lists in work if lists[0]]
        if not work:
            return "no param has a grad"
        for index, (group, _) in enumerate(work):
            rule = group["swgl"]["rule"]
            if not RULES[rule].graphable:
                return f"rule {rule!r} (param group {index}) is not capturable"
        why = graphs.params_blocker(graphs.grad_owners(self.param_groups))
        if why is None and self._triton_plan(work) is None:
            return "the step takes the foreach path (fused=False or tensors the kernels skip)"
        return why

    def _fused_groups(self, work) -> list[FusedGroup]:
        """``work`` as :func:`triton_step` takes it; the lr a device scalar where this step
        set them (graphs may run)."""
        return [FusedGroup(group["swgl"]["rule"], hyper(group["swgl"]), self.kernel_args(group),
                           self._lr[id(group)] if self._lr_live else None, params, grads,
                           stabilities, steps, buffers, extras)
                for group, (params, grads, stabilities, steps, buffers, extras) in work]

    def _triton_plan(self, work) -> list[list[list[int]]] | None:
        """Per group, the index lists of its launch groups (:func:`triton_plan`); None for the
        foreach path."""
        wants = {group["fused"] for group, _ in work}
        if wants == {False}:
            return None
        plan = triton_plan(self._fused_groups(work))
        if True in wants and plan is None and not _compiles_on_cpu(work):
            cpu = sorted(name for name, rule in RULES.items() if rule.cpu_fused)
            raise RuntimeError(
                "fused=True needs every param on one CUDA device, contiguous, of dtype "
                f"fp32/bf16/fp16, and a rule with a kernel (or, for rules {cpu}, every param "
                "on the CPU, where torch.compile builds the step with a C++ compiler); pass "
                "fused=None to fall back"
            )
        return plan if False not in wants else None

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a ``state_dict()``; buffers and SWGL state stay fp32 (torch casts them to the
        param's dtype) and contiguous, ``step`` lives on a CUDA param's device. Each saved
        group's ``swgl`` options are checked first (a bad one raises and loads nothing), and
        options added since the checkpoint was saved take their defaults."""
        groups = state_dict.get("param_groups") if isinstance(state_dict, dict) else None
        options = []   # per saved group, in order
        for index, group in enumerate(groups if isinstance(groups, list) else []):
            if not isinstance(group, dict) or "swgl" not in group:
                raise ValueError(f"state_dict param group {index} has no 'swgl' options: not "
                                 f"a state_dict of {type(self).__name__}")
            try:
                options.append(check_swgl(group["swgl"]))
            except (ValueError, TypeError) as err:
                raise type(err)(f"state_dict param group {index}: {err}") from None
        super().load_state_dict(state_dict)
        self._state_version += 1   # new state tensors: no graph may replay onto the old ones
        for group, checked in zip(self.param_groups, options):
            group["swgl"] = checked
        # the checkpoint's options, its rule included, are the ones now checked
        self._swgl_checked = {i: dict(g["swgl"]) for i, g in enumerate(self.param_groups)}
        for state in self.state.values():
            for key, value in state.items():
                if key == "step":
                    continue
                if isinstance(value, Tensor) and value.is_floating_point():
                    state[key] = value.to(torch.float32).contiguous()
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p)
                if state and "step" in state:
                    device = p.device if p.is_cuda else torch.device("cpu")
                    state["step"] = state["step"].to(device=device, dtype=torch.float32)

    def _foreach_step(self, work) -> None:
        """The rule's foreach variants around the optimizer's foreach math: exactly
        ``SWGL.wrap(torch optimizer)``, with the guard of :func:`_guard_on_device`."""
        grads = [g for _, lists in work for g in lists[1]]
        found = None
        compile_ = _compiles_on_cpu(work)
        if _guard_on_device(work):
            found = found_nonfinite(grads)
        elif not all_finite(grads):   # one host read: no sync on the CPU
            return
        for group, (params, grads, stabilities, steps, buffers, extras) in work:
            options = group["swgl"]
            rule, hp = RULES[options["rule"]], hyper(options)
            before, after = ((rule.before.fused, rule.after and rule.after.fused) if compile_
                             else (rule.before.foreach, rule.after and rule.after.foreach))
            if found is None:
                torch._foreach_add_(steps, 1.0)
            else:
                applies = (1.0 - found).reshape(()).to(steps[0].device)
                torch._foreach_add_(steps, [applies] * len(steps))
            state = {"stability": stabilities, **extras}
            # the rule writes its gradient into d; the grads themselves are only read (on the
            # CPU the copies live on between steps: base.copies)
            d = copies(grads, self._kept, (id(group), "d"), torch.float32, owners=params)
            aux = before(params, d, state, steps, hp, Context(found=found))
            snapshots = None
            if options["mode"] == "update":
                snapshots = copies(params, self._kept, (id(group), "snapshot"))
            # what a skipped step puts back (the after phase may work in the snapshots)
            saved = []
            if found is not None:
                saved = [torch._foreach_mul(xs, 1.0) for xs in (params, *buffers)]
            w = [p.float() for p in params]
            if options["mode"] == "update":  # the update mutates d; the after phase reads it (v4)
                d = copies(d, self._kept, (id(group), "update"))
            # bias corrections and SGD's first step come from the device step counters, not
            # from a host counter per group: a step skipped on the device flag, or a param
            # without a grad at some step, sets the counters apart, and reading them syncs
            self._foreach_update(group, w, d, buffers, torch.stack(steps))
            for p, w32 in zip(params, w):
                if w32 is not p:
                    p.copy_(w32)
            if options["mode"] == "update":
                after(params, snapshots, state, steps, aux, hp, Context())
            if found is not None:  # the rule kept its state; put the rest back
                _restore(found, [params, *buffers], saved)

    def _foreach_update(self, group, w, g, buffers, steps: Tensor) -> None:
        """Update the fp32 params ``w`` in place from fp32 grads ``g`` (subclasses); ``steps``
        are the step counters (already counted for this step), stacked on their device."""
        raise NotImplementedError

    def kernel_args(self, group: dict[str, Any]) -> dict[str, Any]:
        """The optimizer's hyperparameters as :func:`swgl.kernels.triton_swgl.step` takes them."""
        raise NotImplementedError
