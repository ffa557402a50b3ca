r"""Blockwise 8-bit stability with a dynamic, log-spaced code per block: ~1.03 bytes/param.

The flattened tensor is cut into blocks of :data:`BLOCK` (256) elements. Each block keeps
two fp32 numbers, ``lo`` and ``step`` (in log2 units), and each element one code ``k``:

.. math::

    \hat s = 0 \text{ if } k = 0, \qquad \hat s = 2^{lo + (k - 1)\,step} \text{ for } k = 1..255

``lo .. lo + 254 step`` spans the block's nonzero values, so the relative resolution is the
same at every magnitude and adapts to the block: a block spanning one decade is stored to
within 1.4% per level, and no block's span exceeds :data:`LOG2_RANGE` (2^-32 below its
largest value; smaller values round to 0 or ``2^lo``). Stabilities span many decades (v2's
EMA starts at 0 and goes up to 1e20, v1's starts at 1), which an absmax-scaled linear or
tree code (bitsandbytes' dynamic map) resolves badly below the block's maximum; the log
code was measured against it in ``benchmarks/storage_accuracy.py``.

Rounding is stochastic between the two neighbouring levels, unbiased in the linear domain:
the EMA moves ``s`` by 1% of the gap per step, far less than one level, so rounding to the
nearest level would freeze it (measured: 13% against 7% mean error in the modulated
gradient). The price is variance: each step's rounding error (up to one level, 3% for a
typical block spanning 3 decades) decays in the EMA over ``1 / (1 - alpha)`` steps, so the
stored values carry about ``sigma / sqrt(1 - alpha^2)``, some 5.5% median relative error at
alpha = 0.99. The error is unbiased (per-tensor means stay within 2.2% of fp32's). The dither
is seeded from the param's step and shape (see :func:`swgl.state._common.dither_seed`), so a
resumed run rounds exactly as the original.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from swgl.state._common import check_tensor, dither_seed, n_blocks, padded_blocks, uniform

__all__ = ["Blockwise8Storage", "quantize", "dequantize", "BLOCK", "LOG2_RANGE"]

#: Elements per block (each block adds 8 bytes: 8/256 = 0.031 bytes per param).
BLOCK = 256
#: Largest span of one block, in log2 units: level spacing is at most 2^(32/254) - 1 = 9.1%.
LOG2_RANGE = 32.0
_LEVELS = 254  # codes 1..255 are 255 levels, 254 steps apart


def quantize(
    flat: Tensor, block: int = BLOCK, seed: int | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Codes (uint8, ``flat.numel()``), ``lo`` and ``step`` (fp32 per block) for ``flat >= 0``.

    ``seed=None`` rounds to the nearest level; an int rounds stochastically with that seed.
    """
    numel = flat.numel()
    x = padded_blocks(flat.float(), block)
    pos = x > 0
    lx = torch.log2(x)  # -inf at 0
    hi = lx.amax(1, keepdim=True)
    lo = torch.where(pos, lx, math.inf).amin(1, keepdim=True)
    empty = torch.isinf(hi)
    lo = torch.where(empty, 0.0, torch.maximum(lo, hi - LOG2_RANGE))
    step = torch.where(empty, 0.0, (hi - lo) / _LEVELS)
    # f: position in steps above lo; -1 stands for "at or below zero's side of lo".
    f = torch.where(step > 0, (lx - lo) / step.clamp_min(1e-30), 0.0)
    f = torch.where(pos, f, -1.0)
    below = f.floor_().clamp_(-1.0, float(_LEVELS))
    v_lo = torch.where(below >= 0, torch.exp2(lo + below * step), 0.0)
    v_hi = torch.exp2(lo + (below + 1).clamp_max_(_LEVELS) * step)
    gap = v_hi - v_lo
    p_up = torch.where(gap > 0, (x - v_lo) / gap.clamp_min(1e-38), 0.0)
    threshold = 0.5 if seed is None else uniform(x.numel(), x.device, seed).view_as(x)
    up = p_up > threshold
    codes = (below + 1 + up).clamp_(0, _LEVELS + 1).to(torch.uint8)
    return codes.view(-1)[:numel], lo.view(-1), step.view(-1)


def dequantize(codes: Tensor, lo: Tensor, step: Tensor, block: int = BLOCK) -> Tensor:
    """The fp32 values (flat) that ``codes``, ``lo`` and ``step`` stand for."""
    k = padded_blocks(codes, block).float()
    values = torch.exp2(lo[:, None] + (k - 1) * step[:, None])
    return torch.where(k > 0, values, 0.0).view(-1)[: codes.numel()]


class Blockwise8Storage:
    """Codes under ``"stability_codes"``, per-block ``lo``/``step`` under ``stability_log2_*``."""

    name = "blockwise8"
    keys = ("stability_codes", "stability_log2_lo", "stability_log2_step")

    def __init__(self, block: int = BLOCK) -> None:
        self.block = block

    def init(self, p: Tensor, value: float) -> dict[str, Tensor]:
        blocks = n_blocks(p.numel(), self.block)
        zero = value == 0.0
        return {
            "stability_codes": torch.full(
                (p.numel(),), 0 if zero else 1, dtype=torch.uint8, device=p.device
            ),
            "stability_log2_lo": torch.full(
                (blocks,), 0.0 if zero else math.log2(value), device=p.device
            ),
            "stability_log2_step": torch.zeros(blocks, device=p.device),
        }

    def load(self, entry: dict[str, Tensor], p: Tensor) -> Tensor:
        flat = dequantize(
            entry["stability_codes"], entry["stability_log2_lo"], entry["stability_log2_step"],
            self.block,
        )
        return flat.view(p.shape)

    def store(self, entry: dict[str, Tensor], working: Tensor) -> None:
        seed = dither_seed(entry, working.shape, salt=0xB8)
        codes, lo, step = quantize(working.reshape(-1), self.block, seed)
        entry["stability_codes"].copy_(codes)
        entry["stability_log2_lo"].copy_(lo)
        entry["stability_log2_step"].copy_(step)

    def check(self, entry: dict[str, Tensor], p: Tensor, index: int) -> None:
        blocks = (n_blocks(p.numel(), self.block),)
        what = f"for param {index}"
        check_tensor(entry["stability_codes"], f"stability_codes {what}", torch.uint8,
                     (p.numel(),))
        check_tensor(entry["stability_log2_lo"], f"stability_log2_lo {what}", torch.float32,
                     blocks, nonnegative=False)
        check_tensor(entry["stability_log2_step"], f"stability_log2_step {what}",
                     torch.float32, blocks)
