"""How SWGL's stability state is stored, kept apart from the math.

The rules in :mod:`swgl.rules` always compute on fp32 working tensors. A storage turns its
state entries into such a tensor (:meth:`Storage.load`) and writes the updated tensor back
(:meth:`Storage.store`), so compact formats cost a transient fp32 buffer during the step and
nothing between steps. Register a new format in :data:`STORAGES`.

Formats (bytes per parameter between steps, plus 4 bytes per tensor for the step counter):

==================  ===========  ======================================================
name                B/param      state
==================  ===========  ======================================================
``fp32``            4            the EMA itself (the seed's format)
``bf16``            2            bf16, stochastic rounding (:mod:`swgl.state.bf16`)
``blockwise8``      1.031        8-bit log-spaced codes, 256-element blocks
                                 (:mod:`swgl.state.blockwise8`)
``grouped``         4 / row len  one fp32 mean per dim-0 slice (:mod:`swgl.state.grouped`)
``grouped-block``   0.016        one fp32 mean per 256 consecutive elements
``factored``        4(r+c)/(rc)  row and column means, full fp32 for 1-D tensors
                                 (:mod:`swgl.state.factored`)
==================  ===========  ======================================================

Every format works with every rule in ``SWGL`` and ``SWGL.wrap``, because the math only ever
sees the fp32 working tensors; ``swgl.optim``'s optimizers keep fp32 state only (their fused
step updates it in place) and refuse ``storage``. A fused kernel that updates fp32 state in
place can take ``fp32`` directly; any other format goes through ``load`` -> the rule ->
``store`` (the foreach path), at the cost of the transient fp32 buffer. State entries are
plain tensors of fixed dtype (uint8, bf16, fp32), so checkpoints load with
``torch.load(weights_only=True)`` and the optimizers install them without torch's cast to
the param dtype.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from swgl.state._common import check_tensor

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
        """Write ``working`` (as returned by :meth:`load`, then updated) back into ``entry``.

        ``entry`` is the param's whole state: its ``"step"`` (already counted for this step)
        seeds stochastic rounding, so a resumed run rounds exactly as the original did.
        """
        ...

    def check(self, entry: dict[str, Tensor], p: Tensor, index: int) -> None:
        """Raise ``ValueError`` if a loaded ``entry`` cannot belong to ``p`` (wrong dtype or
        shape, non-finite or negative stability)."""
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
        check_tensor(
            entry["stability"], f"stability for param {index}", torch.float32, tuple(p.shape)
        )


def _registry() -> dict[str, Storage]:
    from swgl.state.bf16 import Bf16Storage
    from swgl.state.blockwise8 import Blockwise8Storage
    from swgl.state.factored import FactoredStorage
    from swgl.state.grouped import GroupedStorage

    formats: tuple[Storage, ...] = (
        Fp32Storage(),
        Bf16Storage("bf16", stochastic=True),
        Blockwise8Storage(),
        GroupedStorage("grouped", block=None),
        GroupedStorage("grouped-block", block=256),
        FactoredStorage(),
    )
    return {s.name: s for s in formats}


STORAGES: dict[str, Storage] = _registry()
