r"""Triton kernels of the ``v6`` rule (:mod:`swgl.rules.synaptic`): its SI consolidation and its
after phase (v5's pull and SI's path integral in one pass). The formulas are the rule's
reference functions, written once there; each kernel names the one it follows.

Two kinds of launch table (:class:`swgl.kernels.triton_swgl.Launch`), over one launch group:

* the state's: kinds 0 params, 1 consolidated ``F``, 2 anchor ``mu``, 3 ``path``;
* the after phase's: kinds 0 params, 1 grads, 2 ``F``, 3 ``mu``, 4 ``path``, 5 the params as
  they were before the base step (snapshots, in the params' dtype).

The flags are device scalars, so nothing waits for the host:

* :func:`importance_sum`: where ``shift`` is set, per-program partial sums of
  ``Om = max(0, path / ((w - mu)^2 + XI))`` (reads ``w``, ``mu``, ``path``), totalled with
  ``.sum()`` (deterministic: no atomics); where it is 0 each program writes a 0 and exits;
  it and :func:`consolidate` run on :meth:`Launch.strided_grid` (most steps have no shift);
* :func:`consolidate`: where ``shift`` is set, ``F += Om gain``, ``path = 0``, ``mu = w``
  (reads ``w``, ``mu``, ``path``, ``F``; writes ``F``, ``path``, ``mu``); else it exits.
  :func:`swgl.rules.synaptic._consolidate` is their reference;
* :func:`pull_and_path`: ``w = (w + k mu) / (1 + k)``, ``k = strength F`` (``strength`` holds
  the gate and the fade: where it is 0 the pull's loads are skipped), then
  ``path -= clamp(g (w - w_before) / grad_scale, -R_MAX, R_MAX)`` with the new ``w`` as its
  dtype stores it; it never exits on ``strength`` (the path sums from the first step), only
  where the skip flag ``found`` is set (then nothing is read or written). Reads ``w``, ``g``,
  ``w_before``, ``path`` (and ``F``, ``mu`` when pulling); writes ``path`` (and ``w``).
  :func:`swgl.rules.synaptic._pull_and_path` is its reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from swgl.kernels.triton_swgl import BLOCK, NUM_WARPS, Launch, _ld, _ptr, _st, _tile, _tile_at
from swgl.rules.importance import R_MAX
from swgl.rules.synaptic import XI

__all__ = ["importance_sum", "consolidate", "pull_and_path"]

_XI = tl.constexpr(XI)
_RMAX = tl.constexpr(R_MAX)


@triton.jit
def _om(w, mu, path):
    """SI's importance ``max(0, path / ((w - mu)^2 + XI))``."""
    d = w - mu
    return tl.maximum(path / (d * d + _XI), 0.0)


@triton.jit
def _om_body(pp, mp, qp, offs, n, MASKED: tl.constexpr):
    # masked lanes load 0 everywhere: their Om is 0 / XI = 0
    mask = offs < n
    return _om(_ld(pp, offs, mask, MASKED), _ld(mp, offs, mask, MASKED),
               _ld(qp, offs, mask, MASKED))


@triton.jit
def _importance_sum_kernel(ptrs, T, blocks, nblocks, numels, shiftp, partials,
                           P_DTYPE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK_: tl.constexpr):
    # strided over the tiles (Launch.strided_grid): each program sums its tiles in order
    pid = tl.program_id(0)
    total = 0.0
    if tl.load(shiftp) != 0.0:
        for t in range(pid, nblocks, tl.num_programs(0)):
            i, offs, n, full = _tile_at(blocks, nblocks, numels, t, BLOCK_)
            pp = _ptr(ptrs, 0, T, i, P_DTYPE, ALIGNED)
            mp = _ptr(ptrs, 2, T, i, tl.float32, ALIGNED)
            qp = _ptr(ptrs, 3, T, i, tl.float32, ALIGNED)
            if full:
                total += tl.sum(_om_body(pp, mp, qp, offs, n, False), axis=0)
            else:
                total += tl.sum(_om_body(pp, mp, qp, offs, n, True), axis=0)
    tl.store(partials + pid, total)


@triton.jit
def _consolidate_body(pp, fp, mp, qp, offs, n, gain, MASKED: tl.constexpr):
    mask = offs < n
    w = _ld(pp, offs, mask, MASKED)
    om = _om(w, _ld(mp, offs, mask, MASKED), _ld(qp, offs, mask, MASKED))
    _st(fp, offs, _ld(fp, offs, mask, MASKED) + om * gain, mask, MASKED)
    _st(qp, offs, tl.zeros_like(w), mask, MASKED)
    _st(mp, offs, w, mask, MASKED)


@triton.jit
def _consolidate_kernel(ptrs, T, blocks, nblocks, numels, shiftp, gainp,
                        P_DTYPE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK_: tl.constexpr):
    # strided over the tiles (Launch.strided_grid)
    if tl.load(shiftp) != 0.0:
        gain = tl.load(gainp)
        for t in range(tl.program_id(0), nblocks, tl.num_programs(0)):
            i, offs, n, full = _tile_at(blocks, nblocks, numels, t, BLOCK_)
            pp = _ptr(ptrs, 0, T, i, P_DTYPE, ALIGNED)
            fp = _ptr(ptrs, 1, T, i, tl.float32, ALIGNED)
            mp = _ptr(ptrs, 2, T, i, tl.float32, ALIGNED)
            qp = _ptr(ptrs, 3, T, i, tl.float32, ALIGNED)
            if full:
                _consolidate_body(pp, fp, mp, qp, offs, n, gain, False)
            else:
                _consolidate_body(pp, fp, mp, qp, offs, n, gain, True)


@triton.jit
def _after_body(pp, gp, fp, mp, qp, bp, offs, n, strength, inv_scale, MASKED: tl.constexpr):
    mask = offs < n
    w = _ld(pp, offs, mask, MASKED)
    if strength != 0.0:   # before the first shift (or faded out) only the path moves
        k = strength * _ld(fp, offs, mask, MASKED)
        w = (w + k * _ld(mp, offs, mask, MASKED)) / (1.0 + k)
        _st(pp, offs, w, mask, MASKED)
        w = w.to(pp.dtype.element_ty).to(tl.float32)   # the step as the param stores it
    d = _ld(gp, offs, mask, MASKED) * (w - _ld(bp, offs, mask, MASKED)) * inv_scale
    d = tl.minimum(tl.maximum(d, -_RMAX), _RMAX)
    _st(qp, offs, _ld(qp, offs, mask, MASKED) - d, mask, MASKED)


@triton.jit
def _after_kernel(ptrs, T, blocks, nblocks, numels, strengthp, foundp, inv_scale,
                  P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, HAS_FOUND: tl.constexpr,
                  ALIGNED: tl.constexpr, BLOCK_: tl.constexpr):
    pid, i, offs, n, full, skip = _tile(blocks, nblocks, numels, foundp, HAS_FOUND, BLOCK_)
    if not skip:
        pp = _ptr(ptrs, 0, T, i, P_DTYPE, ALIGNED)
        gp = _ptr(ptrs, 1, T, i, G_DTYPE, ALIGNED)
        fp = _ptr(ptrs, 2, T, i, tl.float32, ALIGNED)
        mp = _ptr(ptrs, 3, T, i, tl.float32, ALIGNED)
        qp = _ptr(ptrs, 4, T, i, tl.float32, ALIGNED)
        bp = _ptr(ptrs, 5, T, i, P_DTYPE, ALIGNED)
        strength = tl.load(strengthp)
        if full:
            _after_body(pp, gp, fp, mp, qp, bp, offs, n, strength, inv_scale, False)
        else:
            _after_body(pp, gp, fp, mp, qp, bp, offs, n, strength, inv_scale, True)


def _flag(x: Tensor, device) -> Tensor:
    return x.reshape(1).to(device=device, dtype=torch.float32)


def importance_sum(lau: Launch, shift: Tensor) -> Tensor:
    """Where ``shift`` (a device flag) is set, the sum of ``Om`` over the launch group's
    elements (a 0-d fp32 on its device); else 0. ``lau``: a state table."""
    grid = lau.strided_grid()
    partials = torch.empty(grid[0], device=lau.device, dtype=torch.float32)
    _importance_sum_kernel[grid](
        lau.ptrs, lau.T, lau.blocks, lau.nblocks, lau.numels, _flag(shift, lau.device),
        partials, P_DTYPE=lau.p_dtype, ALIGNED=lau.aligned, BLOCK_=BLOCK, num_warps=NUM_WARPS,
    )
    return partials.sum()


def consolidate(lau: Launch, shift: Tensor, gain: Tensor) -> None:
    """Where ``shift`` is set: ``F += Om gain``, ``path = 0``, ``mu = w`` (``gain`` a device
    scalar). ``lau``: a state table."""
    _consolidate_kernel[lau.strided_grid()](
        lau.ptrs, lau.T, lau.blocks, lau.nblocks, lau.numels, _flag(shift, lau.device),
        _flag(gain, lau.device), P_DTYPE=lau.p_dtype, ALIGNED=lau.aligned, BLOCK_=BLOCK,
        num_warps=NUM_WARPS,
    )


def pull_and_path(lau: Launch, strength: Tensor, found: Tensor | None, grad_scale: float) -> None:
    """The pull (``strength``: a device scalar, 0 for none) and the path, where the skip flag
    ``found`` (None: none) is not set. ``lau``: an after table."""
    strength = _flag(strength, lau.device)
    _after_kernel[lau.grid()](
        lau.ptrs, lau.T, lau.blocks, lau.nblocks, lau.numels, strength,
        strength if found is None else _flag(found, lau.device), 1.0 / grad_scale,
        P_DTYPE=lau.p_dtype, G_DTYPE=lau.g_dtype, HAS_FOUND=found is not None,
        ALIGNED=lau.aligned, BLOCK_=BLOCK, num_warps=NUM_WARPS,
    )
