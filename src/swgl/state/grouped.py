r"""Grouped stability: one fp32 value per group of elements (the seed roadmap's idea).

A group is either a *row* (``"grouped"``): a slice along dim 0, i.e. an output neuron of a
Linear weight, an output channel of a conv, a token of an embedding; a 1-D or 0-D tensor
(bias, norm gain) has one group per element, so it is stored in full. Or it is a *block*
(``"grouped-block"``) of :data:`BLOCK` consecutive elements of the flattened tensor.

Grouping is a projection: :meth:`GroupedStorage.store` keeps each group's mean and
:meth:`GroupedStorage.load` broadcasts it back. The EMA is linear, so the stored value is
exactly the EMA of the group-mean relative impact, :math:`\bar s_G \leftarrow \alpha \bar
s_G + (1-\alpha)\,\overline{r}_G`; all elements of a group share one modulation factor.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from swgl.state._common import block_means, check_tensor, expand_blocks, n_blocks

__all__ = ["GroupedStorage", "BLOCK"]

#: Elements per group for ``"grouped-block"``: 4/256 = 0.016 bytes per param.
BLOCK = 256


class GroupedStorage:
    """Group means under ``"stability_groups"`` (fp32, one per row or per block)."""

    keys = ("stability_groups",)

    def __init__(self, name: str, block: int | None) -> None:
        self.name = name
        #: elements per group; None means one group per dim-0 slice
        self.block = block

    def group_size(self, p: Tensor) -> int:
        if self.block is not None:
            return self.block
        return math.prod(p.shape[1:]) if p.dim() >= 2 and p.numel() else 1

    def n_groups(self, p: Tensor) -> int:
        return n_blocks(p.numel(), self.group_size(p))

    def init(self, p: Tensor, value: float) -> dict[str, Tensor]:
        return {"stability_groups": torch.full((self.n_groups(p),), value, device=p.device)}

    def load(self, entry: dict[str, Tensor], p: Tensor) -> Tensor:
        return expand_blocks(entry["stability_groups"], self.group_size(p), p.numel()).view(
            p.shape
        )

    def store(self, entry: dict[str, Tensor], working: Tensor) -> None:
        size = self.group_size(working)
        entry["stability_groups"].copy_(block_means(working.reshape(-1), size))

    def check(self, entry: dict[str, Tensor], p: Tensor, index: int) -> None:
        check_tensor(
            entry["stability_groups"], f"stability_groups for param {index}", torch.float32,
            (self.n_groups(p),),
        )
