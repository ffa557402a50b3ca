"""Checks on a loaded ``state_dict`` that both SWGL classes make before touching anything."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

__all__ = ["by_position", "check_api", "check_step", "check_state_dict_layout"]

#: where each API keeps its rule in a param group: SWGL, and the wrapper (prefixed, beside the
#: base optimizer's own options)
_RULE_KEYS = {"": "rule", "swgl_": "swgl_rule"}


def by_position(state: dict[Any, Any], saved_groups: list[dict[str, Any]]) -> dict[Any, Any]:
    """Key ``state`` by position in ``param_groups``, as torch matches saved params to ours.

    Saved ids are positions in a plain ``state_dict()`` but FQNs in one from
    ``torch.distributed.checkpoint.state_dict``; unknown keys pass through to be rejected.
    """
    ids = [pid for group in saved_groups for pid in group["params"]]
    position = {pid: i for i, pid in enumerate(ids)}
    return {position.get(key, key): entry for key, entry in state.items()}


def check_step(step: Any, index: int) -> None:
    """A saved step counter must be one finite, non-negative whole number on a real device."""
    if not isinstance(step, Tensor) or step.numel() != 1:
        raise ValueError(f"step for param {index} must be a one-element tensor")
    if step.is_meta:
        raise ValueError(f"step for param {index} is on the meta device: it holds no value")
    value = float(step)
    if not (math.isfinite(value) and value >= 0 and value == int(value)):
        raise ValueError(f"step for param {index} must be a whole number >= 0, got {value!r}")


def check_state_dict_layout(state_dict: Any, groups: list[dict[str, Any]]) -> None:
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


def check_api(state_dict: dict[str, Any], prefix: str) -> None:
    """Refuse a checkpoint of the other SWGL API (after :func:`check_state_dict_layout`):
    ``SWGL(...)``'s groups hold its options unprefixed, ``SWGL.wrap(...)``'s as ``swgl_*``
    beside the base optimizer's. Loaded into the other class, its tensors would be taken for
    the base's (or the options missed) and the run would fail steps later."""
    other = next(p for p in _RULE_KEYS if p != prefix)
    if any(_RULE_KEYS[other] in g and _RULE_KEYS[prefix] not in g
           for g in state_dict["param_groups"]):
        saved, here = ("SWGL.wrap(base)", "SWGL(params)") if other else (
            "SWGL(params)", "SWGL.wrap(base)")
        raise ValueError(
            f"this state_dict was saved by {saved}, not by {here}: load it into the same API "
            "(the two keep their options and state under different keys)")


# -- mode="update": the base optimizer's update, rescaled ----------------------------------


