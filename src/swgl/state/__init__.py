"""How SWGL's stability state is stored, kept apart from the math.

The rules in :mod:`swgl.rules` always compute on fp32 working tensors. A storage turns its
state entries into such a tensor (:meth:`Storage.load`) and writes the updated tensor back
(:meth:`Storage.store`), so compact formats cost a transient fp32 buffer during the step and
nothing between steps. Register a new format in :data:`STORAGES`.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

__all__ = ["Storage", "Fp32Storage", "STORAGES"]


class Storage(Protocol):
    """The contract every state format meets."""

    name: str
    #: the ``state[p]`` keys this format owns (tensors only, so checkpoints stay standard)
    keys: tuple[str, ...]

    def init(self, p: Tensor, value: float) -> dict[str, Tensor]:
        """Fresh state for ``p`` representing a stability filled with ``value``."""
        ...

    def load(self, entry: dict[str, Tensor], p: Tensor) -> Tensor:
        """An fp32 tensor shaped like ``p``; it may alias the stored tensor."""
        ...

    def store(self, entry: dict[str, Tensor], working: Tensor) -> None:
        """Write ``working`` (as returned by :meth:`load`, then updated) back into ``entry``."""
        ...

    def check(self, entry: dict[str, Tensor], p: Tensor, index: int) -> None:
        """Raise ``ValueError`` if a loaded ``entry`` cannot belong to ``p``."""
        ...


class Fp32Storage:
    """One fp32 tensor per param (the seed's format): 4 bytes per parameter."""

    name = "fp32"
    keys = ("stability",)

    def init(self, p: Tensor, value: float) -> dict[str, Tensor]:
        return {
            "stability": torch.full_like(
                p, value, dtype=torch.float32, memory_format=torch.preserve_format
            )
        }

    def load(self, entry: dict[str, Tensor], p: Tensor) -> Tensor:
        return entry["stability"]

    def store(self, entry: dict[str, Tensor], working: Tensor) -> None:
        if working is not entry["stability"]:
            entry["stability"].copy_(working)

    def check(self, entry: dict[str, Tensor], p: Tensor, index: int) -> None:
        check_like_param(entry["stability"], p, f"stability for param {index}", torch.float32)


def check_like_param(t: object, p: Tensor, what: str, dtype: torch.dtype) -> None:
    """A loaded state tensor must be a finite tensor of ``dtype`` shaped like ``p``."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{what} must be a tensor, got {type(t).__name__}")
    if t.dtype != dtype:
        raise ValueError(f"{what} must have dtype {dtype}, got {t.dtype}")
    if t.shape != p.shape:
        raise ValueError(
            f"{what} has shape {tuple(t.shape)}, but the param has shape {tuple(p.shape)}: "
            "this checkpoint belongs to another model"
        )
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{what} holds non-finite values")


STORAGES: dict[str, Storage] = {s.name: s for s in (Fp32Storage(),)}
