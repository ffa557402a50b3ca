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

And ``detect``, one program on a handful of scalars: the shift detector's step (its EMAs,
bias corrections and test, and the skip flag's masking) in one launch instead of some thirty
ops on 0-d tensors; :func:`swgl.rules.consolidation._detect` is its reference.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from swgl.kernels.triton_swgl import (
    BLOCK,
    NUM_WARPS,
    Launch,
    _bias_correction,
    _ld,
    _ptr,
    _st,
    _tile,
    _tile_at,
)

__all__ = ["consolidate", "pull", "detect"]


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
    # strided over the tiles (Launch.strided_grid): most steps have no shift
    if tl.load(shiftp) != 0.0:
        gain = tl.load(gainp)
        for t in range(tl.program_id(0), nblocks, tl.num_programs(0)):
            i, offs, n, full = _tile_at(blocks, nblocks, numels, t, BLOCK_)
            pp = _ptr(ptrs, 0, T, i, P_DTYPE, ALIGNED)
            fp = _ptr(ptrs, 1, T, i, tl.float32, ALIGNED)
            sp = _ptr(ptrs, 2, T, i, tl.float32, ALIGNED)
            mp = _ptr(ptrs, 3, T, i, tl.float32, ALIGNED)
            if full:
                _consolidate_body(pp, fp, sp, mp, offs, n, decay, gain, False, IMPORTANCE,
                                  ANCHOR)
            else:
                _consolidate_body(pp, fp, sp, mp, offs, n, decay, gain, True, IMPORTANCE,
                                  ANCHOR)


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
    _consolidate_kernel[lau.strided_grid()](
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


@triton.jit
def _detect_kernel(np_, detp, foundp, shiftp, keep_fast, keep_slow, ln_fast, ln_slow, ratio,
                   refractory, warmup, HAS_FOUND: tl.constexpr):
    """``det = [t, f, q, t_last]`` advanced by one step of signal ``n`` (in place), and the
    shift flag (1.0 / 0.0); where ``found`` is set, ``det`` is kept and the flag is 0."""
    n = tl.load(np_).to(tl.float32)
    t0 = tl.load(detp)
    f0 = tl.load(detp + 1)
    q0 = tl.load(detp + 2)
    last = tl.load(detp + 3)
    t = t0 + 1.0
    f = f0 + keep_fast * (n - f0)
    q = q0 + keep_slow * (n - q0)
    f_hat = f / _bias_correction(t, ln_fast)
    q_hat = q / _bias_correction(t, ln_slow)
    shift = (t > warmup) & (t - last > refractory) & (f_hat > ratio * q_hat)
    if HAS_FOUND:
        ok = tl.load(foundp) == 0.0
        shift = shift & ok
        t = tl.where(ok, t, t0)
        f = tl.where(ok, f, f0)
        q = tl.where(ok, q, q0)
    tl.store(detp, t)
    tl.store(detp + 1, f)
    tl.store(detp + 2, q)
    tl.store(detp + 3, tl.where(shift, t, last))
    tl.store(shiftp, shift.to(tl.float32))


def detect(n: Tensor, det: Tensor, found: Tensor | None, *, b_fast: float, b_slow: float,
           ratio: float, refractory: float, warmup: float) -> Tensor:
    """The detector's step, one launch: advances ``det`` (fp32 ``[t, f, q, t_last]``) in place
    with the signal ``n`` (a device scalar) and returns the shift flag (a 0-d fp32 on
    ``det``'s device); where the skip flag ``found`` is set (non-zero), ``det`` is kept and
    the flag is 0. The constants are the rule's (:mod:`swgl.rules.consolidation`)."""
    shift = torch.empty((), device=det.device, dtype=torch.float32)
    found = None if found is None else found.to(det.device)
    _detect_kernel[(1,)](
        n.to(det.device), det, det if found is None else found, shift, 1.0 - b_fast,
        1.0 - b_slow, math.log(b_fast), math.log(b_slow), ratio, float(refractory),
        float(warmup), HAS_FOUND=found is not None, num_warps=1,
    )
    return shift
