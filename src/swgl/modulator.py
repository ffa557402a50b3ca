"""The SWGL optimizer classes.

* :class:`SWGL` is the seed's two-object API: ``swgl.step()`` modulates ``p.grad`` and the
  user then calls ``base_optimizer.step()``.
* :class:`SWGLWrapper` (``SWGL.wrap(base)``) is a full ``torch.optim.Optimizer``: its
  ``step(closure)`` runs the closure, modulates, then steps the base optimizer. It shares
  ``param_groups`` with the base, so LR schedulers, ``add_param_group`` and ``zero_grad`` act on
  both, and its ``state_dict()`` is the base's with SWGL's tensors under ``swgl_*`` keys.

Both keep SWGL's per-parameter state in ``self.state[p]``: the storage format's tensors (for
the default fp32 format ``{"stability"}``) plus ``"step"``, so the seed's monitoring loop
(``swgl.state[p]['stability']``) works in either mode; ``opt.stability(p)`` gives the fp32
view under any format.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.optim import Optimizer

from swgl import functional
from swgl.companion import Hooks, find_owners
from swgl.options import check_options, hyper
from swgl.rules import DEFAULT_RULE, RULES
from swgl.state import STORAGES

__all__ = ["SWGL", "SWGLWrapper", "DEFAULT_RULE"]

#: Prefix of SWGL's keys in the wrapper's param groups and state_dict.
PREFIX = "swgl_"


def _is_swgl(optimizer: Optimizer) -> bool:
    return isinstance(optimizer, _SWGLBase)


def _check_params(group: dict[str, Any]) -> None:
    for i, p in enumerate(group["params"]):
        if not isinstance(p, Tensor):
            raise TypeError(f"params[{i}] must be a torch.Tensor, got {type(p).__name__}")
        if p.is_complex():
            raise TypeError(f"params[{i}] is complex ({p.dtype}); SWGL supports real params only")
        if not p.is_floating_point():
            raise TypeError(f"params[{i}] has dtype {p.dtype}; SWGL needs floating-point params")


class _SWGLBase(Optimizer):
    """State handling and the modulation pass shared by both modes."""

    #: Prefix of SWGL's options in a param group: the wrapper shares its groups with a base
    #: optimizer whose own ``eps``, ``alpha`` or ``foreach`` must not be overwritten.
    option_prefix = ""

    def _option(self, group: dict[str, Any], name: str) -> Any:
        return group[self.option_prefix + name]

    def _storage(self, group: dict[str, Any]):
        return STORAGES[self._option(group, "storage")]

    def _new_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
        init_value = RULES[self._option(group, "rule")].init_value
        # the step counter lives on the param's device: the default rule reads it there
        step = torch.zeros((), device=_local(p).device)
        return {**self._storage(group).init(p, init_value), "step": step}

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
        storage = self._storage(group)
        params, grads, stabilities, steps = [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise TypeError(
                    "SWGL does not support sparse gradients; build the embedding with "
                    "sparse=False or leave it out of SWGL's params"
                )
            state = self.state[p]
            if "step" not in state:
                self._on_fresh_state(p)
                state.update(self._new_state(p, group))
            params.append(p.detach())
            grads.append(p.grad)
            stabilities.append(storage.load(state, p))
            steps.append(state["step"])
        return params, grads, stabilities, steps

    def _on_fresh_state(self, p: Tensor) -> None:
        """Hook for the wrapper's 'base has state but SWGL does not' warning."""

    @torch.no_grad()
    def _modulate(self, grad_scale: float = 1.0) -> tuple[bool | Tensor, list[_Pending]]:
        """Run the rule's ``before`` phase over every group.

        Returns whether it ran (False, or a device flag, if non-finite grads made it skip)
        and, for groups whose rule has an ``after`` phase, what it needs after the base step.
        """
        applied: bool | Tensor = True
        pending: list[_Pending] = []
        for group in self.param_groups:
            params, grads, stabilities, steps = self._gather(group)
            options = self._rule_options(group)
            outcome = functional.swgl(params, grads, stabilities, steps, **options,
                                      grad_scale=grad_scale)
            storage = self._storage(group)
            owners = [p for p in group["params"] if p.grad is not None]
            # fp32 state is updated in place (masked on the device); other formats are
            # stored back only when the step applied, which reads the flag on the host
            if storage.name != "fp32" and bool(outcome.applied):
                for p, working in zip(owners, stabilities):
                    storage.store(self.state[p], working)
            if outcome.aux is not None and RULES[options["rule"]].after is not None:
                pending.append(_Pending(group, owners, outcome.aux))
            applied = outcome.applied if applied is True else applied & outcome.applied
        return applied, pending

    def _rule_options(self, group: dict[str, Any]) -> dict[str, Any]:
        pre = self.option_prefix
        names = ("rule", "alpha", "lambda_reg", "eps", "max_boost", "signal", "max_damping",
                 "mode", "shock", "foreach", "fused")
        return {name: group.get(pre + name) for name in names}

    @torch.no_grad()
    def _after(self, pending: list[_Pending], snapshots: list[list[Tensor] | None]) -> None:
        """The rule's ``after`` phase for each pending group (the base has stepped)."""
        for entry, snaps in zip(pending, snapshots):
            storage = self._storage(entry.group)
            pre = self.option_prefix
            functional.swgl_after(
                entry.params, snaps, [storage.load(self.state[p], p) for p in entry.params],
                [self.state[p]["step"] for p in entry.params], entry.aux,
                rule=entry.group[pre + "rule"], hp=hyper(entry.group, pre),
                foreach=entry.group[pre + "foreach"], fused=entry.group.get(pre + "fused"),
            )

    def stats(self, names: Any = None, quantiles: tuple[float, ...] | None = None):
        """Per-layer summaries of the stability state (see :func:`swgl.stats.layer_stats`).

        ``names`` is a model or an iterable of ``(name, param)`` used to label the layers.
        """
        from swgl.stats import DEFAULT_QUANTILES, layer_stats

        return layer_stats(self, names, DEFAULT_QUANTILES if quantiles is None else quantiles)

    def on_task_boundary(self) -> None:
        """Forget the stability estimates (as after a full shock), for users who know where one
        task ends and the next begins. The base optimizer's state is left alone."""
        for group in self.param_groups:
            for p in group["params"]:
                if "step" in self.state.get(p, {}):
                    self.state[p].update(self._new_state(p, group))

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
            expected = {*storage.keys, "step"}
            if not isinstance(entry, dict) or set(entry) != expected:
                keys = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
                raise ValueError(
                    f"state_dict entry for param {index} must have keys {sorted(expected)} "
                    f"(storage {storage.name!r}), got {keys}"
                )
            _check_step(entry["step"], index)
            storage.check(entry, p, index)

    def _install_swgl_state(self, saved: dict[int, dict[str, Any]]) -> None:
        """Replace SWGL's state with checked ``saved`` state, keeping the saved dtypes."""
        params = [p for group in self.param_groups for p in group["params"]]
        self.state.clear()
        for index, entry in saved.items():
            p = params[index]
            state = {k: v.detach().to(device=p.device, copy=True) for k, v in entry.items()}
            state["step"] = entry["step"].detach().to(device=_local(p).device,
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


class SWGL(_SWGLBase):
    r"""Stability-Weighted Gradient Learning, the seed's two-object API.

    Call ``swgl.step()`` after ``loss.backward()`` and before ``base_optimizer.step()``; it
    rescales every ``p.grad`` in place by a factor in ``[1/max_boost, max_boost]`` (rule ``v2``)
    computed from an EMA of the relative impact :math:`|g|/(|w|+\epsilon)`. See
    :mod:`swgl.rules` for the exact math of each rule and ``docs/algorithm.md`` for why.

    Args:
        params: iterable of tensors or of param-group dicts; options may differ per group.
        alpha: EMA decay in [0, 1).
        lambda_reg: decay on volatile weights, >= 0 (see :mod:`swgl.rules`).
        eps: numerical floor, > 0.
        max_boost: the largest factor a gradient is multiplied by, >= 1.
        rule: ``"v3"`` (default: v2 that only damps), ``"v2"`` (bounded, boosts and damps),
            ``"v1"`` or ``"v1-paper"`` (the seed's formulas); see :mod:`swgl.rules`.
        signal: what v2's EMA tracks: ``"utility"`` :math:`|g w|` (default, chosen by
            measurement: docs/results.md), ``"relative"`` :math:`|g|/(|w|+\delta)` (the seed's)
            or ``"fisher"`` :math:`g^2`.
        mode: ``"grad"`` scales the gradient; ``"update"`` (v2/v3) scales the change the
            base optimizer makes, which Adam's normalisation would otherwise cancel. Default
            None: ``"update"`` for v2/v3, ``"grad"`` for the seed's v1 rules. In the
            two-object pattern the update is rescaled by a step post-hook on the base
            optimizer; it holds a copy of the params and the factors from ``swgl.step()`` until
            ``base_optimizer.step()`` (2 extra param-sized buffers, transiently).
        max_damping: the strongest damping is ``1/max_damping`` (default: ``max_boost``).
        shock: restart a tensor's EMA when its signal jumps above ``shock`` times the EMA (drift;
            0 = off).
        storage: how the stability state is stored (see :mod:`swgl.state`); ``"fp32"``.
        foreach: use the multi-tensor implementation (default) or the per-tensor reference.
        fused: the Triton kernels (:mod:`swgl.kernels`): None picks them on CUDA when Triton
            is installed, True requires them, False never uses them.
        scaler: a ``torch.amp.GradScaler`` whose scaled grads ``step()`` will see (the seed's
            AMP snippet). Without it, call ``scaler.unscale_(base)`` before ``swgl.step()``;
            the seed's order without ``scaler=`` raises instead of training on scaled grads.

    Non-finite gradients skip the whole step: state and grads are left untouched, so a
    ``GradScaler`` still sees the infs and skips its own step.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        alpha: float = 0.99,
        lambda_reg: float = 0.01,
        eps: float = 1e-8,
        max_boost: float = 10.0,
        *,
        rule: str = DEFAULT_RULE,
        signal: str | None = None,
        mode: str | None = None,
        max_damping: float | None = None,
        shock: float = 0.0,
        storage: str = "fp32",
        foreach: bool = True,
        fused: bool | None = None,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        defaults = dict(
            rule=rule, alpha=alpha, lambda_reg=lambda_reg, eps=eps, max_boost=max_boost,
            signal=signal, mode=mode, max_damping=max_damping, shock=shock,
            storage=storage, foreach=foreach, fused=fused,
        )
        check_options(dict(defaults))
        if scaler is not None and not isinstance(scaler, torch.amp.GradScaler):
            raise TypeError(f"scaler must be a torch.amp.GradScaler, got {type(scaler).__name__}")
        super().__init__(params, defaults)
        self.scaler = scaler
        self._param_ids = {id(p) for g in self.param_groups for p in g["params"]}
        self._fingerprint: tuple[Tensor, Tensor] | None = None
        self._pending_update: list[tuple[_Pending, list[Tensor] | None]] = []
        self._fresh = True
        self._hooks = Hooks()
        self._owned: set[int] = set()
        for group in self.param_groups:
            for p in group["params"]:
                if p.requires_grad:
                    self.state[p].update(self._new_state(p, group))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        check_options(group)
        _check_params(group)
        if hasattr(self, "_param_ids"):
            self._param_ids.update(id(p) for p in group["params"])

    def _current_grad_scale(self) -> float:
        scaler = self.scaler
        if scaler is None or not scaler.is_enabled():
            return 1.0
        from torch.amp.grad_scaler import OptState

        stages = [s["stage"] for s in scaler._per_optimizer_states.values()]
        if any(stage is OptState.UNSCALED for stage in stages):
            return 1.0  # the user already called scaler.unscale_(base)
        return float(scaler.get_scale())

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Modulate the grads in place. Call before ``base_optimizer.step()``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._pending_update or not self._hooks.owner_ids:
            # first step, or no hooked optimizer stepped since the last one (a new base):
            # the update made since then is rescaled now, and the owners are looked up again
            if self._pending_update:
                self._after(*zip(*self._pending_update))
                self._pending_update = []
            owners = find_owners(self._param_ids, _is_swgl)
            self._hooks.attach(owners, self._before_base_step, self._after_base_step)
            self._owned = {id(p) for o in owners for g in o.param_groups for p in g["params"]}
        _, pending = self._modulate(self._current_grad_scale())
        self._fingerprint = self._take_fingerprint() if self.scaler is None else None
        # a param no optimizer holds is never stepped: there is no update to rescale
        pending = [entry.only(self._owned)[0] for entry in pending]
        self._pending_update = [(e, _snapshot(e)) for e in pending if e.params]
        return loss

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
            self._after(*zip(*mine))
        self._pending_update = rest

    def _take_fingerprint(self) -> tuple[Tensor, Tensor] | None:
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return None
        smallest = min(grads, key=Tensor.numel)
        return smallest, smallest.detach().abs().sum()

    def _before_base_step(self, base: Optimizer) -> None:
        """Checks made when another optimizer steps params that this SWGL manages."""
        if self._fresh:
            self._fresh = False
            has_history = any(
                base.state.get(p) for g in base.param_groups for p in g["params"]
            ) and any(float(st["step"]) <= 1 for st in self.state.values() if "step" in st)
            if has_history and self._base_was_resumed(base):
                warnings.warn(
                    "the base optimizer resumed with saved state, but SWGL starts from fresh "
                    "stability estimates: save and load swgl.state_dict() with your checkpoint",
                    stacklevel=4,
                )
        fingerprint, self._fingerprint = self._fingerprint, None
        if fingerprint is None or not _called_from_grad_scaler():
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
        _check_state_dict_layout(state_dict, self.param_groups)
        merged = self._saved_groups(state_dict)
        saved = _by_position(state_dict["state"], state_dict["param_groups"])
        self._check_swgl_state(saved, merged)
        for group, options in zip(self.param_groups, merged):
            group.update({k: v for k, v in options.items() if k != "params"})
        self._install_swgl_state(saved)
        self._fresh = False


class SWGLWrapper(_SWGLBase):
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
        alpha: float = 0.99,
        lambda_reg: float = 0.01,
        eps: float = 1e-8,
        max_boost: float = 10.0,
        rule: str = DEFAULT_RULE,
        signal: str | None = None,
        mode: str | None = None,
        max_damping: float | None = None,
        shock: float = 0.0,
        storage: str = "fp32",
        foreach: bool = True,
        fused: bool | None = None,
    ) -> None:
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
        if isinstance(base_opt, _SWGLBase):
            raise TypeError("cannot wrap an SWGL optimizer in another SWGL")
        defaults = {
            PREFIX + k: v
            for k, v in dict(
                rule=rule, alpha=alpha, lambda_reg=lambda_reg, eps=eps, max_boost=max_boost,
                signal=signal, mode=mode, max_damping=max_damping, shock=shock,
                storage=storage, foreach=foreach, fused=fused,
            ).items()
        }
        check_options(dict(defaults), PREFIX)
        self.base = base_opt
        self._warned_fresh = False
        self._sharing_groups = False
        # With the base's defaults: OneCycleLR and CyclicLR look for momentum/betas there.
        super().__init__(base_opt.param_groups, {**base_opt.defaults, **defaults})
        self._sharing_groups = True
        # Share the groups themselves: schedulers and add_param_group then act on both.
        self.param_groups = base_opt.param_groups
        for group in self.param_groups:
            for key, value in defaults.items():
                group.setdefault(key, value)
            check_options(group, PREFIX)
            _check_params(group)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not self._sharing_groups:  # Optimizer.__init__ copying the base's groups
            super().add_param_group(param_group)
            return
        self.base.add_param_group(param_group)
        group = self.param_groups[-1]
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        check_options(group, PREFIX)
        _check_params(group)

    def _on_fresh_state(self, p: Tensor) -> None:
        if not self._warned_fresh and self.base.state.get(p):
            self._warned_fresh = True
            warnings.warn(
                "the base optimizer has state for a param SWGL has never seen (a checkpoint "
                "without SWGL state?); SWGL's stability estimates start from scratch",
                stacklevel=5,
            )

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Run ``closure`` (forward and backward), modulate the grads, then step the base."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        _, pending = self._modulate()
        snapshots = [_snapshot(entry) for entry in pending]
        self.base.step()
        self._after(pending, snapshots)
        return loss

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
        _check_state_dict_layout(state_dict, self.param_groups)
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
        saved = _by_position(swgl_state, state_dict["param_groups"])
        self._check_swgl_state(saved, self._saved_groups(state_dict))
        if base_state and not swgl_state:
            warnings.warn(
                "this checkpoint holds base-optimizer state but no SWGL state (no swgl_* keys); "
                "SWGL's stability estimates restart from scratch",
                stacklevel=2,
            )
            self._warned_fresh = True
        self.base.load_state_dict({"state": base_state, "param_groups": state_dict["param_groups"]})
        self.param_groups = self.base.param_groups
        self._install_swgl_state(saved)

    def __repr__(self) -> str:
        return f"SWGLWrapper(base={self.base!r})"


def _wrap(base: Optimizer, **options: Any) -> SWGLWrapper:
    """Wrap ``base`` so that ``step(closure)`` modulates and then steps it."""
    if not isinstance(base, Optimizer):
        raise TypeError(f"base must be a torch.optim.Optimizer instance, got {type(base).__name__}")
    return SWGLWrapper(base, **options)


SWGL.wrap = staticmethod(_wrap)  # type: ignore[attr-defined]


def _by_position(state: dict[Any, Any], saved_groups: list[dict[str, Any]]) -> dict[Any, Any]:
    """Key ``state`` by position in ``param_groups``, as torch matches saved params to ours.

    Saved ids are positions in a plain ``state_dict()`` but FQNs in one from
    ``torch.distributed.checkpoint.state_dict``; unknown keys pass through to be rejected.
    """
    ids = [pid for group in saved_groups for pid in group["params"]]
    position = {pid: i for i, pid in enumerate(ids)}
    return {position.get(key, key): entry for key, entry in state.items()}


def _check_step(step: Any, index: int) -> None:
    """A saved step counter must be one finite, non-negative whole number on a real device."""
    if not isinstance(step, Tensor) or step.numel() != 1:
        raise ValueError(f"step for param {index} must be a one-element tensor")
    if step.is_meta:
        raise ValueError(f"step for param {index} is on the meta device: it holds no value")
    value = float(step)
    if not (math.isfinite(value) and value >= 0 and value == int(value)):
        raise ValueError(f"step for param {index} must be a whole number >= 0, got {value!r}")


def _check_state_dict_layout(state_dict: Any, groups: list[dict[str, Any]]) -> None:
    if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
        keys = sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict).__name__
        raise ValueError(f"state_dict must have keys ['param_groups', 'state'], got {keys}")
    saved_groups = state_dict["param_groups"]
    if not isinstance(saved_groups, list) or len(saved_groups) != len(groups):
        n = len(saved_groups) if isinstance(saved_groups, list) else saved_groups
        raise ValueError(f"state_dict has {n} param groups, the optimizer has {len(groups)}")
    for i, (group, saved) in enumerate(zip(groups, saved_groups)):
        if not isinstance(saved, dict) or len(saved.get("params", ())) != len(group["params"]):
            raise ValueError(
                f"param group {i} of state_dict does not match the optimizer's "
                f"({len(group['params'])} params): the checkpoint belongs to another model"
            )
    if not isinstance(state_dict["state"], dict):
        raise ValueError("state_dict['state'] must be a dict")


# -- mode="update": the base optimizer's update, rescaled ----------------------------------


def _local(t: Tensor) -> Tensor:
    """A DTensor's local shard (FSDP2: the rules run on shards), else ``t``."""
    return t.to_local() if hasattr(t, "to_local") else t


class _Pending(NamedTuple):
    """What a group's ``after`` phase needs once the base optimizer has stepped."""

    group: dict[str, Any]
    params: list[Tensor]
    aux: list[Tensor]

    def only(self, ids: set[int]) -> tuple[_Pending, _Pending]:
        """(the part for the params in ``ids``, the rest)."""
        (taken, _), (left, _) = self.split(ids, None)
        return taken, left

    def split(self, ids: set[int], snaps: list[Tensor] | None):
        """((part in ``ids``, its snapshots), (the rest, its snapshots))."""
        inside = [id(p) in ids for p in self.params]
        parts = []
        for want in (True, False):
            idx = [i for i, flag in enumerate(inside) if flag is want]
            part = _Pending(self.group, [self.params[i] for i in idx], [self.aux[i] for i in idx])
            parts.append((part, None if snaps is None else [snaps[i] for i in idx]))
        return parts[0], parts[1]


def _snapshot(entry: _Pending) -> list[Tensor] | None:
    """Copies of the params' local shards before the base step, if the rule needs them (one
    multi-tensor launch; ``* 1.0`` keeps -0.0 and NaN as they are)."""
    rule = RULES[entry.group[_prefix_of(entry.group) + "rule"]]
    if not rule.snapshot or not entry.params:
        return None
    return list(torch._foreach_mul([_local(p.detach()) for p in entry.params], 1.0))


def _prefix_of(group: dict[str, Any]) -> str:
    return PREFIX if PREFIX + "rule" in group else ""


def _called_from_grad_scaler() -> bool:
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
