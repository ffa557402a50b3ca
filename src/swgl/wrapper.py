"""SWGL around a base optimizer, as one ``torch.optim.Optimizer`` (``SWGL.wrap(base)``): its
``step(closure)`` runs the closure, the rule's first phase, the base's step, then the rule's
second phase. It shares ``param_groups`` with the base, so LR schedulers,
``add_param_group`` and ``zero_grad`` act on both, and its ``state_dict()`` is the base's with
SWGL's tensors under ``swgl_*`` keys.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from swgl.base import (
    PREFIX,
    Pending,
    SWGLBase,
    check_cuda_graphs,
    check_params,
    run_closure,
    snapshot,
)
from swgl.checkpoint import by_position, check_state_dict_layout
from swgl.options import MATH_OPTIONS, check_options
from swgl.rules import DEFAULT_RULE

__all__ = ["SWGLWrapper", "wrap"]


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
        self._sharing_groups = False
        self._kept_snapshots: dict[Any, tuple] = {}  # CPU: see base.snapshot
        # With the base's defaults: OneCycleLR and CyclicLR look for momentum/betas there.
        super().__init__(base_opt.param_groups, {**base_opt.defaults, **defaults})
        self._sharing_groups = True
        # Share the groups themselves: schedulers and add_param_group then act on both.
        self.param_groups = base_opt.param_groups
        for index, group in enumerate(self.param_groups):
            self._check_bare(group, index)
            self._check_group(group, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not self._sharing_groups:  # Optimizer.__init__ copying the base's groups
            super().add_param_group(param_group)
            return
        self._check_bare(param_group, len(self.param_groups))  # before the base takes it
        self.base.add_param_group(param_group)
        self._check_group(self.param_groups[-1], self.defaults)

    def _check_bare(self, group: dict[str, Any], index: int) -> None:
        """An SWGL option without the prefix is a key the base ignores: it would do nothing."""
        bare = sorted(k for k in set(group) & set(MATH_OPTIONS) if k not in self.base.defaults)
        if bare:
            raise ValueError(
                f"param group {index} has SWGL option(s) {bare} without the {PREFIX!r} prefix, "
                f"which {type(self.base).__name__} would ignore; name them {PREFIX}<option> "
                "(swgl.groups.param_groups(..., for_wrapper=True) does)"
            )

    def _check_group(self, group: dict[str, Any], defaults: dict[str, Any]) -> None:
        for key, value in defaults.items():
            group.setdefault(key, value)
        check_options(group, PREFIX)
        check_params(group)

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
        loss = run_closure(closure)
        pending = self._run_before(self._before_phase)
        self.base.step()
        if pending:
            self._run_after([entry for entry, _ in pending], [snaps for _, snaps in pending])
        return loss

    def _before_phase(self) -> list[tuple[Pending, list[Tensor] | None]]:
        _, pending = self._modulate()
        keep = self._keeps_snapshots()
        return [(entry, snapshot(entry, self._kept_snapshots, keep)) for entry in pending]

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
            warnings.warn(
                "this checkpoint holds base-optimizer state but no SWGL state (no swgl_* keys); "
                "SWGL's stability estimates restart from scratch",
                stacklevel=2,
            )
            self._warned_fresh = True
        self.base.load_state_dict({"state": base_state, "param_groups": state_dict["param_groups"]})
        self.param_groups = self.base.param_groups
        # torch's groups are the checkpoint's: a plain torch optimizer's has no SWGL options,
        # which then stay the wrapper's
        for group, merged in zip(self.param_groups, saved_groups):
            for key, value in merged.items():
                if key.startswith(PREFIX):
                    group.setdefault(key, value)
        self._install_swgl_state(saved)

    def __repr__(self) -> str:
        return f"SWGLWrapper(base={self.base!r})"


def wrap(base: Optimizer, **options: Any) -> SWGLWrapper:
    """Wrap ``base`` so that ``step(closure)`` modulates and then steps it."""
    if not isinstance(base, Optimizer):
        raise TypeError(f"base must be a torch.optim.Optimizer instance, got {type(base).__name__}")
    return SWGLWrapper(base, **options)


