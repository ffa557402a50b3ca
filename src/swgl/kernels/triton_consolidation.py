r"""Triton kernels of the ``v5`` rule's consolidation and pull
(:mod:`swgl.rules.consolidation`), over one launch group of (params, consolidated, stability,
anchor) (the tables of :mod:`swgl.kernels.triton_swgl`).

The flags that gate them are device scalars, so nothing waits for the host, and a kernel
whose flag is 0 exits after one load per program instead of making a masked pass:

* ``consolidate``: where ``shift`` is set, ``F = decay F + gain s`` and ``mu = w`` (reads
  ``F``, ``s``, ``w``; writes ``F``, ``mu``), or either half alone (swgl.optim takes the
  anchor before its fused step and the importance after it);
* ``pull``: ``w = (w + k mu) / (1 + k)``, ``k = strength F``, with ``strength`` a device scalar
  that holds the gate and the fade (0 where the group has not consolidated or the step is
  skipped: the kernel exits) (reads ``w``, ``F``, ``mu``; writes ``w``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from swgl.kernels.triton_swgl import BLOCK, NUM_WARPS, Launch, _ld, _ptr, _st, _tile

__all__ = ["consolidate", "pull"]


@triton.jit
def _consolidate_body(pp, fp, sp, mp, offs, n, decay, gain, MASKED: tl.constexpr,
                      IMPORTANCE: tl.constexpr, ANCHOR: tl.constexpr):
    mask = offs < n
    if IMPORTANCE:
        f = _ld(fp, offs, mask, MASKED)
        s = _ld(sp, offs, mask, MASKED)
        _st(fp, offs, decay * f + gain * s, mask, MASKED)
    if ANCHOR:
        _st(mp, offs, _ld(pp, offs, mask, MASKED).to(tl.float32), mask, MASKED)


@triton.jit
def _consolidate_kernel(ptrs, T, blocks, nblocks, numels, shiftp, gainp, decay,
                        P_DTYPE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK_: tl.constexpr,
                        IMPORTANCE: tl.constexpr, ANCHOR: tl.constexpr):
    pid, i, offs, n, full, skip = _tile(blocks, nblocks, numels, shiftp, False, BLOCK_)
    if tl.load(shiftp) != 0.0:
        pp = _ptr(ptrs, 0, T, i, P_DTYPE, ALIGNED)
        fp = _ptr(ptrs, 1, T, i, tl.float32, ALIGNED)
        sp = _ptr(ptrs, 2, T, i, tl.float32, ALIGNED)
        mp = _ptr(ptrs, 3, T, i, tl.float32, ALIGNED)
        gain = tl.load(gainp)
        if full:
            _consolidate_body(pp, fp, sp, mp, offs, n, decay, gain, False, IMPORTANCE, ANCHOR)
        else:
            _consolidate_body(pp, fp, sp, mp, offs, n, decay, gain, True, IMPORTANCE, ANCHOR)


@triton.jit
def _pull_body(pp, fp, mp, offs, n, strength, MASKED: tl.constexpr):
    mask = offs < n
    k = strength * _ld(fp, offs, mask, MASKED)
    w = _ld(pp, offs, mask, MASKED).to(tl.float32)
    _st(pp, offs, (w + k * _ld(mp, offs, mask, MASKED)) / (1.0 + k), mask, MASKED)


@triton.jit
def _pull_kernel(ptrs, T, blocks, nblocks, numels, strengthp,
                 P_DTYPE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK_: tl.constexpr):
    pid, i, offs, n, full, skip = _tile(blocks, nblocks, numels, strengthp, False, BLOCK_)
    strength = tl.load(strengthp)
    if strength != 0.0:
        pp = _ptr(ptrs, 0, T, i, P_DTYPE, ALIGNED)
        fp = _ptr(ptrs, 1, T, i, tl.float32, ALIGNED)
        mp = _ptr(ptrs, 3, T, i, tl.float32, ALIGNED)
        if full:
            _pull_body(pp, fp, mp, offs, n, strength, False)
        else:
            _pull_body(pp, fp, mp, offs, n, strength, True)


def _flag(x: Tensor, device) -> Tensor:
    return x.reshape(1).to(device=device, dtype=torch.float32)


def consolidate(lau: Launch, shift: Tensor, gain: Tensor | None, decay: float,
                importance: bool = True, anchor: bool = True) -> None:
    """Where ``shift`` (a device bool) is set: ``F = decay F + gain s`` (``importance``),
    ``mu = w`` (``anchor``)."""
    _consolidate_kernel[lau.grid()](
        lau.ptrs, lau.T, lau.blocks, lau.nblocks, lau.numels, _flag(shift, lau.device),
        _flag(shift if gain is None else gain, lau.device), decay, P_DTYPE=lau.p_dtype,
        ALIGNED=lau.aligned, BLOCK_=BLOCK, num_warps=NUM_WARPS, IMPORTANCE=importance,
        ANCHOR=anchor,
    )


def pull(lau: Launch, strength: Tensor) -> None:
    """``w = (w + k mu) / (1 + k)``, ``k = strength F``; ``strength`` is a device scalar (the
    option times the gate and the fade), and where it is 0 nothing is read or written."""
    _pull_kernel[lau.grid()](
        lau.ptrs, lau.T, lau.blocks, lau.nblocks, lau.numels, _flag(strength, lau.device),
        P_DTYPE=lau.p_dtype, ALIGNED=lau.aligned, BLOCK_=BLOCK, num_warps=NUM_WARPS,
    )
