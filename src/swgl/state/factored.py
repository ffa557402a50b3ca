r"""Factored stability (Adafactor style): a row and a column vector per matrix.

A tensor with 2 or more dims is seen as the matrix ``(shape[0], numel / shape[0])``; the
state is its row means :math:`R` and column means :math:`C` (fp32), and the stability is
reconstructed as the rank-1 matrix

.. math:: \hat S_{ij} = R_i \, C_j / \bar R

which has the stored row and column means (for non-negative :math:`S` it is the
I-divergence-closest rank-1 matrix, Shazeer & Stern 2018). The EMA is linear and the row
means of :math:`\hat S` are :math:`R`, so the state is exactly the EMA of the row and column
means of the relative impact. An ``r x c`` matrix costs ``4 (r + c)`` bytes.

Tensors that factoring would not shrink (1-D and 0-D tensors, and any with
``r + c >= r c``) fall back to a full fp32 copy under ``"stability_row"`` (shaped like the
param) with an empty ``"stability_col"``; in transformers they are the biases and norm
gains, a fraction of a percent of the parameters.
"""

from __future__ import annotations

import torch
from torch import Tensor

from swgl.state._common import check_tensor

__all__ = ["FactoredStorage"]


def _matrix_shape(p: Tensor) -> tuple[int, int] | None:
    """``(rows, cols)`` if ``p`` is stored factored, None for the full fallback."""
    if p.dim() < 2 or p.numel() == 0:
        return None
    rows = p.shape[0]
    cols = p.numel() // rows
    return (rows, cols) if rows + cols < rows * cols else None


class FactoredStorage:
    """Row means under ``"stability_row"``, column means under ``"stability_col"`` (fp32)."""

    name = "factored"
    keys = ("stability_row", "stability_col")

    def init(self, p: Tensor, value: float) -> dict[str, Tensor]:
        shape = _matrix_shape(p)
        if shape is None:
            return {
                "stability_row": torch.full(p.shape, value, device=p.device),
                "stability_col": torch.zeros(0, device=p.device),
            }
        rows, cols = shape
        return {
            "stability_row": torch.full((rows,), value, device=p.device),
            "stability_col": torch.full((cols,), value, device=p.device),
        }

    def load(self, entry: dict[str, Tensor], p: Tensor) -> Tensor:
        row, col = entry["stability_row"], entry["stability_col"]
        if _matrix_shape(p) is None:
            return row.clone()
        mean = row.mean()
        # An all-zero row vector makes the product zero whatever the divisor.
        mean = torch.where(mean > 0, mean, 1.0)
        return torch.outer(row / mean, col).view(p.shape)

    def store(self, entry: dict[str, Tensor], working: Tensor) -> None:
        shape = _matrix_shape(working)
        if shape is None:
            entry["stability_row"].copy_(working)
            return
        matrix = working.reshape(shape)
        torch.mean(matrix, 1, out=entry["stability_row"])
        torch.mean(matrix, 0, out=entry["stability_col"])

    def check(self, entry: dict[str, Tensor], p: Tensor, index: int) -> None:
        shape = _matrix_shape(p)
        if shape is None:
            row_shape, col_shape = tuple(p.shape), (0,)
        else:
            row_shape, col_shape = (shape[0],), (shape[1],)
        check_tensor(entry["stability_row"], f"stability_row for param {index}", torch.float32,
                     row_shape)
        check_tensor(entry["stability_col"], f"stability_col for param {index}", torch.float32,
                     col_shape)
