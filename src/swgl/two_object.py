"""The seed's two-object API: ``swgl.step()`` runs the rule's first phase (it modulates
``p.grad`` or records what the second needs) and the user then calls
``base_optimizer.step()``, whose per-instance hooks (:mod:`swgl.companion`) run the second
phase and the checks made when the base steps.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from swgl._warn import warn
from swgl.base import (
    Pending,
    SWGLBase,
    check_cuda_graphs,
    check_params,
    eager_under_compile,
    run_closure,
    snapshot,
)
from swgl.checkpoint import by_position, check_api, check_state_dict_layout
from swgl.companion import Hooks, find_owners
from swgl.options import check_options, group_label
from swgl.rules import DEFAULT_RULE, RULES
from swgl.wrapper import SWGLWrapper, wrap

__all__ = ["SWGL"]


def _is_swgl(optimizer: Optimizer) -> bool:
    return isinstance(optimizer, SWGLBase)


class SWGL(SWGLBase):
    r"""Stability-Weighted Gradient Learning, the seed's two-object API.

    Call ``swgl.step()`` after ``loss.backward()`` and before ``base_optimizer.step()``. Under
    the default rule ``v6`` (:mod:`swgl.rules.synaptic`) the base optimizer's step stands
    until the gradient statistics jump (a distribution shift, found without task
    boundaries); each element's contribution to the loss's decrease since the last shift
    (synaptic intelligence's path integral) is then added to its importance, and after each
    step the weights are pulled toward their values at the last shift, each by its
    importance (v5's implicit pull, :mod:`swgl.rules.consolidation`). ``lambda_reg`` > 0
    adds v4's damping (:mod:`swgl.rules.importance`). In ``mode="update"`` the base
    optimizer's step is rescaled by a post-hook on it. See :mod:`swgl.rules` for the exact
    math of each rule and ``docs/algorithm.md`` for why.

    Args:
        params: iterable of tensors or of param-group dicts; options may differ per group.
        alpha: EMA decay in [0, 1); None: the rule's default (v4 to v7: 0.999, the seed's
            rules: 0.99).
        lambda_reg: the stability penalty's strength, >= 0 (v4/v5: how strongly importance
            bends a step; the seed's rules: their decay term); None: the rule's default (v4,
            v5: 3.0, v6 and v7: 0 (no damping), the seed's rules: 0.01).
        eps: numerical floor, > 0 (v4/v5: a floor under the gradient's RMS).
        max_boost: >= 1; v4/v5: the strongest damping is ``1/max_boost`` and the progress
            rescale at most ``max_boost``; the seed's rules: the largest gradient boost.
        rule: ``"v6"`` (default: SI's importance, consolidated at detected shifts, in
            v5's pull), ``"v7"`` (v6 with each shift's importance divided by the steps it
            was learned over: one strength for tasks of any length), ``"v5"`` (v4 plus
            consolidation at detected shifts), ``"v4"``
            (importance damping alone: a third of v5's state, and mode ``"grad"``),
            ``"v3"``/``"v2"`` (the normalised EMA of issue 4),
            ``"v1"`` or ``"v1-paper"`` (the seed's formulas, bit-exact); see :mod:`swgl.rules`.
        signal: v2/v3 only: what their EMA tracks, ``"utility"`` :math:`|g w|` (their
            default), ``"relative"`` :math:`|g|/(|w|+\delta)` (the seed's) or ``"fisher"``.
        mode: ``"update"`` (the only mode of v5 to v7, the default of v4/v3/v2) scales the
            change the base optimizer makes, which Adam's normalisation would otherwise
            cancel; ``"grad"`` scales the gradient (the seed's rules). In the two-object
            pattern the update mode holds a copy of the params from ``swgl.step()`` until
            ``base_optimizer.step()`` (transiently).
        max_damping: v2/v3 only: the strongest damping is ``1/max_damping``.
        shock: v2/v3 only, deprecated (measured useless, CHANGELOG.md).
        consolidation: v5 to v7 only: the strength of the pull toward the weights at the
            last detected distribution shift, >= 0; None: v6 3e-4, v7 0.3 (per step of the
            importance's segment), v5 0.03 (0: no pull).
        consolidation_horizon: v5 to v7 only: from this many steps after a shift on, the
            pull fades as ``horizon / steps since the shift``, >= 0; None: v6 and v7 0 (it
            never fades), v5 20.
        storage: how the stability state is stored (see :mod:`swgl.state`); ``"fp32"``.
        foreach: use the multi-tensor implementation (default) or the per-tensor reference.
        fused: the Triton kernels (:mod:`swgl.kernels`): None picks them on CUDA when Triton
            is installed, True requires them, False never uses them.
        scaler: a ``torch.amp.GradScaler`` whose scaled grads ``step()`` will see (the seed's
            AMP snippet). ``step()`` then calls ``scaler.unscale_(base)`` itself (unless it
            was called already in this iteration), as torch's recipe for gradient clipping
            does: the grads are unscaled in place on the device, with no host sync, and
            ``scaler.step(base)`` skips the step on overflow as usual. Clip after
            ``swgl.step()`` without calling ``unscale_`` again. Without ``scaler=``, call
            ``scaler.unscale_(base)`` before ``swgl.step()``; the seed's order without
            ``scaler=`` raises instead of training on scaled grads.
        cuda_graphs: run the two phases as CUDA graphs (:mod:`swgl.graphs`): None (default)
            does on CUDA under the rules that allow it (v4 to v7) with fp32 state, once a
            step's tensors repeat; True requires it (ValueError at the first step that cannot);
            False never. While on, the update mode's copy of the params is kept between steps
            (one param-sized buffer) instead of being allocated at each step.

    Non-finite gradients skip the whole step: state and grads are left untouched, so a
    ``GradScaler`` still sees the infs and skips its own step.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        alpha: float | None = None,
        lambda_reg: float | None = None,
        eps: float = 1e-8,
        max_boost: float = 10.0,
        *,
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
        scaler: torch.amp.GradScaler | None = None,
        cuda_graphs: bool | None = None,
    ) -> None:
        defaults = dict(
            rule=rule, alpha=alpha, lambda_reg=lambda_reg, eps=eps, max_boost=max_boost,
            signal=signal, mode=mode, max_damping=max_damping, shock=shock,
            consolidation=consolidation, consolidation_horizon=consolidation_horizon,
            storage=storage, foreach=foreach, fused=fused,
        )
        check_options(dict(defaults))
        check_cuda_graphs(cuda_graphs)
        if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
            raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")
        super().__init__(params, defaults)
        self.scaler = scaler
        self.cuda_graphs = cuda_graphs
        self._param_ids = {id(p) for g in self.param_groups for p in g["params"]}
        self._fingerprint: tuple[Tensor, Tensor] | None = None
        self._smallest: Tensor | None = None
        self._pending_update: list[tuple[Pending, list[Tensor] | None]] = []
        self._fresh = True
        self._hooks = Hooks()
        self._owned: set[int] = set()
        self._kept_snapshots: dict[Any, tuple] = {}  # CPU: see base.snapshot
        self._initial_stability()

    _REBUILT = (*SWGLBase._REBUILT, "_hooks", "_owned", "_param_ids", "_fingerprint",
                "_smallest")

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        # an update SWGL.step() left for the base step: kept, without its variants (closures
        # pickle cannot take; the copy picks them again)
        state["_pending_update"] = [(entry._replace(plan=None), snaps)
                                    for entry, snaps in self._pending_update]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """A copy finds its base optimizers again at its next step (hooks are per instance)."""
        super().__setstate__(state)
        self._param_ids = {id(p) for g in self.param_groups for p in g["params"]}
        self._fingerprint, self._smallest = None, None
        self._hooks, self._owned = Hooks(), set()

    def _initial_stability(self) -> None:
        """The stability exists from the start, as the seed's monitoring loop reads it; the
        rest (the step counter, an anchor taken from the weights) at a param's first step, as
        the wrapper and swgl.optim make it: weights loaded after building SWGL count."""
        for group in self.param_groups:
            rule = RULES[group["rule"]]
            for p in group["params"]:
                if p.requires_grad and not self.state.get(p):
                    self.state[p].update(self._storage(group).init(p, rule.init_value))

    def state_dict(self) -> dict[str, Any]:
        """torch's ``state_dict``, without the initial stability of the params not stepped yet
        (as torch saves no state before a param's first step).

        Before any param has stepped, every param that SWGL will step is listed with the state
        its first step makes and a step of 0, which :meth:`load_state_dict` takes as no state.
        ``torch.distributed.checkpoint`` loads into the state_dict of a fresh optimizer, and
        skips the zero-grad step it would make to fill one because SWGL's state holds the
        initial stability from the start: without these entries it would load nothing."""
        out = super().state_dict()
        if any("step" in entry for entry in self.state.values()):
            out["state"] = {i: entry for i, entry in out["state"].items() if "step" in entry}
            return out
        params = [(p, group) for group in self.param_groups for p in group["params"]]
        out["state"] = {i: self._fresh_state(p, group) for i, (p, group) in enumerate(params)
                        if p in self.state}
        return out

    @staticmethod
    def wrap(base: Optimizer, **options: Any) -> SWGLWrapper:
        """``SWGLWrapper(base, **options)`` (:mod:`swgl.wrapper`); unknown options raise."""
        return wrap(base, **options)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        # named by index, and warned of a deprecated value only if the defaults' check was not
        check_options(group, label=group_label(len(self.param_groups) - 1),
                      warn_deprecated=group["shock"] != self.defaults["shock"])
        check_params(group)
        self._checked(group)
        if hasattr(self, "_param_ids"):
            self._param_ids.update(id(p) for p in group["params"])
            self._smallest = None

    def _unscale(self) -> None:
        """``scaler.unscale_`` on every hooked owner not yet unscaled in this iteration.

        Reading the scale instead (``scaler.get_scale()``) would sync with the host at each
        step; unscaling is one device pass, the one ``scaler.step`` would make later."""
        scaler = self.scaler
        if scaler is None or not scaler.is_enabled():
            return
        from torch.amp.grad_scaler import OptState

        for owner in self._hooks.owners:
            if scaler._per_optimizer_states[id(owner)]["stage"] is OptState.READY:
                scaler.unscale_(owner)

    @eager_under_compile
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Modulate the grads in place. Call before ``base_optimizer.step()``."""
        loss = run_closure(closure)
        if self._pending_update or not self._hooks.owner_ids:
            # first step, or no hooked optimizer stepped since the last one (a new base):
            # the update made since then is rescaled now, and the owners are looked up again
            if self._pending_update:
                self._after(*zip(*self._pending_update))
                self._pending_update = []
            owners = find_owners(self._param_ids, _is_swgl)
            self._hooks.attach(owners, self._before_base_step, self._after_base_step)
            self._owned = {id(p) for o in owners for g in o.param_groups for p in g["params"]}
            self._state_version += 1   # what the phases hand the owners may change
        self._unscale()
        self._pending_update = self._run_before(self._before_phase)
        self._fingerprint = self._take_fingerprint() if self.scaler is None else None
        return loss

    def _before_phase(self) -> list[tuple[Pending, list[Tensor] | None]]:
        _, pending = self._modulate()
        # a param no optimizer holds is never stepped: there is no update to rescale
        if not self._param_ids <= self._owned:
            pending = [entry.only(self._owned)[0] for entry in pending]
        keep = self._keeps_snapshots()
        return [(e, snapshot(e, self._kept_snapshots, keep)) for e in pending if e.params]

    @eager_under_compile
    def _after_base_step(self, base: Optimizer) -> None:
        """The rule's ``after`` phase for the params ``base`` holds (it just stepped them)."""
        if not self._pending_update:
            return
        ids = {id(p) for g in base.param_groups for p in g["params"]}
        mine, rest = [], []
        for entry, snaps in self._pending_update:
            (taken, taken_snaps), (left, left_snaps) = entry.split(ids, snaps)
            if taken.params:
                mine.append((taken, taken_snaps))
            if left.params:
                rest.append((left, left_snaps))
        if mine:
            self._run_after([entry for entry, _ in mine], [snaps for _, snaps in mine])
        self._pending_update = rest

    def _take_fingerprint(self) -> tuple[Tensor, Tensor] | None:
        # the smallest param with a grad, found once (not a loop over every param per step)
        p = self._smallest
        if p is None or p.grad is None:
            owned = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
            if not owned:
                return None
            p = self._smallest = min(owned, key=Tensor.numel)
        return p.grad, p.grad.detach().abs().sum()

    @eager_under_compile
    def _before_base_step(self, base: Optimizer) -> None:
        """Checks made when another optimizer steps params that this SWGL manages."""
        if self._fresh:
            self._fresh = False
            has_history = any(
                base.state.get(p) for g in base.param_groups for p in g["params"]
            ) and any(float(st["step"]) <= 1 for st in self.state.values() if "step" in st)
            if has_history and self._base_was_resumed(base):
                warn(
                    "the base optimizer resumed with saved state, but SWGL starts from fresh "
                    "stability estimates: save and load swgl.state_dict() with your checkpoint"
                )
        fingerprint, self._fingerprint = self._fingerprint, None
        if fingerprint is None or not called_from_grad_scaler():
            return
        grad, seen = fingerprint
        # nan_to_num: a skipped step (non-finite grads) left the grads as they were
        if not torch.equal(grad.detach().abs().sum().nan_to_num(), seen.nan_to_num()):
            raise RuntimeError(
                "SWGL modulated gradients that GradScaler unscaled afterwards: its statistics "
                "saw scaled gradients. Call scaler.unscale_(base_optimizer) before swgl.step(), "
                "or build SWGL(..., scaler=scaler)."
            )

    def _base_was_resumed(self, base: Optimizer) -> bool:
        for group in base.param_groups:
            for p in group["params"]:
                step = base.state.get(p, {}).get("step")
                if step is not None and float(step) >= 1:
                    return True
        return False

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a ``state_dict()``; stability keeps its saved dtype (torch would cast it)."""
        check_state_dict_layout(state_dict, self.param_groups)
        check_api(state_dict, "")
        merged = self._saved_groups(state_dict)
        saved = by_position(state_dict["state"], state_dict["param_groups"])
        self._check_swgl_state(saved, merged)
        # step 0: a fresh optimizer's entry (see state_dict), no state
        saved = {i: entry for i, entry in saved.items() if float(entry["step"]) > 0}
        for group, options in zip(self.param_groups, merged):
            group.update({k: v for k, v in options.items() if k != "params"})
        self._install_swgl_state(saved)
        self._initial_stability()
        self._fresh = False


def called_from_grad_scaler() -> bool:
    from torch.amp.grad_scaler import GradScaler

    code = GradScaler.step.__code__
    frame = sys._getframe(1)
    for _ in range(12):
        if frame is None:
            return False
        if frame.f_code is code:
            return True
        frame = frame.f_back
    return False
