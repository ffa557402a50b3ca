r"""Triton kernels of the ``v4`` rule (:mod:`swgl.rules.importance`), over whole lists.

Each kernel is one pass over a launch group (see :mod:`swgl.kernels.triton_swgl` for the
pointer and block tables they share); ``k``, ``rho`` and the skip flag are read from device
memory, so nothing waits for the host:

* ``ema``: ``s += (1 - alpha) (g^2 - s)`` and a partial sum of ``s`` per program (reads ``g``
  and ``s``, writes ``s``), and for v5's detector one of ``min(g^2, R_MAX)`` beside it;
* grad mode: the partial sums of ``g^2`` and ``c g^2`` (reads ``g``, ``s``), then
  ``g = rho c g`` (reads ``g``, ``s``, writes ``g``);
* update mode: the partial sums of ``g u`` and ``c g u`` (reads ``w``, ``w_before``, ``s``,
  ``g``), then ``w = w_before + rho c u`` (reads ``w``, ``w_before``, ``s``, writes ``w``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from swgl.kernels.triton_swgl import BLOCK, NUM_WARPS, Launch, _ld, _ptr, _st, _tile, segment_sums
from swgl.rules.base import Hyper
from swgl.rules.importance import R_MAX

_RMAX = tl.constexpr(R_MAX)

__all__ = ["Group", "Update", "Launch"]


@triton.jit
def _factor(s, k, min_scale):
    return tl.maximum(1.0 / (1.0 + s * k), min_scale)


@triton.jit
def _capped_g2(g):
    return tl.minimum(g * g, _RMAX)


@triton.jit
def _ema(g, s, one_minus_alpha):
    """v4's EMA: the new ``s`` from the grad and the old ``s``."""
    return s + one_minus_alpha * (_capped_g2(g) - s)


@triton.jit
def _ema_body(gp, sp, offs, n, one_minus_alpha, inv_scale, skip, MASKED: tl.constexpr):
    mask = offs < n
    g = _ld(gp, offs, mask, MASKED) * inv_scale
    s = _ld(sp, offs, mask, MASKED)
    new = tl.where(skip, s, _ema(g, s, one_minus_alpha))
    _st(sp, offs, new, mask, MASKED)
    return tl.sum(new, axis=0), tl.sum(_capped_g2(g), axis=0)


@triton.jit
def _ema_kernel(ptrs, T, blocks, nblocks, numels, found, partials, one_minus_alpha, inv_scale,
                G_DTYPE: tl.constexpr, ALIGNED: tl.constexpr, HAS_FOUND: tl.constexpr,
                G2: tl.constexpr, BLOCK_: tl.constexpr):
    pid, i, offs, n, full, skip = _tile(blocks, nblocks, numels, found, HAS_FOUND, BLOCK_)
    gp = _ptr(ptrs, 1, T, i, G_DTYPE, ALIGNED)
    sp = _ptr(ptrs, 2, T, i, tl.float32, ALIGNED)
    if full:
        total, g2 = _ema_body(gp, sp, offs, n, one_minus_alpha, inv_scale, skip, False)
    else:
        total, g2 = _ema_body(gp, sp, offs, n, one_minus_alpha, inv_scale, skip, True)
    tl.store(partials + pid, total)
    if G2:  # v5's detector reads it: the capped g^2 of the same read of g
        tl.store(partials + nblocks + pid, g2)


@triton.jit
def _gsums_body(gp, sp, offs, n, k, min_scale, MASKED: tl.constexpr):
    mask = offs < n
    g = _ld(gp, offs, mask, MASKED)
    g2 = g * g
    c = _factor(_ld(sp, offs, mask, MASKED), k, min_scale)
    return -tl.sum(g2, axis=0), -tl.sum(c * g2, axis=0)


@triton.jit
def _gsums_kernel(ptrs, T, blocks, nblocks, numels, kp, partials, min_scale,
                  G_DTYPE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK_: tl.constexpr):
    pid, i, offs, n, full, skip = _tile(blocks, nblocks, numels, kp, False, BLOCK_)
    gp = _ptr(ptrs, 1, T, i, G_DTYPE, ALIGNED)
    sp = _ptr(ptrs, 2, T, i, tl.float32, ALIGNED)
    k = tl.load(kp)
    if full:
        a, b = _gsums_body(gp, sp, offs, n, k, min_scale, False)
    else:
        a, b = _gsums_body(gp, sp, offs, n, k, min_scale, True)
    tl.store(partials + pid, a)
    tl.store(partials + nblocks + pid, b)


@triton.jit
def _grad_body(gp, sp, offs, n, k, rho, min_scale, skip, MASKED: tl.constexpr):
    mask = offs < n
    g = _ld(gp, offs, mask, MASKED)
    c = _factor(_ld(sp, offs, mask, MASKED), k, min_scale)
    _st(gp, offs, tl.where(skip, g, g * (rho * c)), mask, MASKED)


@triton.jit
def _grad_kernel(ptrs, T, blocks, nblocks, numels, found, kp, rhop, min_scale,
                 G_DTYPE: tl.constexpr, ALIGNED: tl.constexpr, HAS_FOUND: tl.constexpr,
                 BLOCK_: tl.constexpr):
    pid, i, offs, n, full, skip = _tile(blocks, nblocks, numels, found, HAS_FOUND, BLOCK_)
    gp = _ptr(ptrs, 1, T, i, G_DTYPE, ALIGNED)
    sp = _ptr(ptrs, 2, T, i, tl.float32, ALIGNED)
    k = tl.load(kp)
    rho = tl.load(rhop)
    if full:
        _grad_body(gp, sp, offs, n, k, rho, min_scale, skip, False)
    else:
        _grad_body(gp, sp, offs, n, k, rho, min_scale, skip, True)


@triton.jit
def _usums_body(pp, bp, sp, gp, offs, n, k, min_scale, MASKED: tl.constexpr):
    mask = offs < n
    gu = _ld(gp, offs, mask, MASKED) * (_ld(pp, offs, mask, MASKED) - _ld(bp, offs, mask, MASKED))
    c = _factor(_ld(sp, offs, mask, MASKED), k, min_scale)
    return tl.sum(gu, axis=0), tl.sum(c * gu, axis=0)


@triton.jit
def _usums_kernel(ptrs, T, blocks, nblocks, numels, kp, partials, min_scale,
                  P_DTYPE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK_: tl.constexpr):
    pid, i, offs, n, full, skip = _tile(blocks, nblocks, numels, kp, False, BLOCK_)
    pp = _ptr(ptrs, 0, T, i, P_DTYPE, ALIGNED)
    bp = _ptr(ptrs, 1, T, i, P_DTYPE, ALIGNED)
    sp = _ptr(ptrs, 2, T, i, tl.float32, ALIGNED)
    gp = _ptr(ptrs, 3, T, i, P_DTYPE, ALIGNED)
    k = tl.load(kp)
    if full:
        a, b = _usums_body(pp, bp, sp, gp, offs, n, k, min_scale, False)
    else:
        a, b = _usums_body(pp, bp, sp, gp, offs, n, k, min_scale, True)
    tl.store(partials + pid, a)
    tl.store(partials + nblocks + pid, b)


@triton.jit
def _update_body(pp, bp, sp, offs, n, k, rho, min_scale, MASKED: tl.constexpr):
    mask = offs < n
    w = _ld(pp, offs, mask, MASKED)
    before = _ld(bp, offs, mask, MASKED)
    c = _factor(_ld(sp, offs, mask, MASKED), k, min_scale)
    _st(pp, offs, before + (rho * c) * (w - before), mask, MASKED)


@triton.jit
def _update_kernel(ptrs, T, blocks, nblocks, numels, kp, rhop, min_scale,
                   P_DTYPE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK_: tl.constexpr):
    pid, i, offs, n, full, skip = _tile(blocks, nblocks, numels, kp, False, BLOCK_)
    pp = _ptr(ptrs, 0, T, i, P_DTYPE, ALIGNED)
    bp = _ptr(ptrs, 1, T, i, P_DTYPE, ALIGNED)
    sp = _ptr(ptrs, 2, T, i, tl.float32, ALIGNED)
    k = tl.load(kp)
    rho = tl.load(rhop)
    if full:
        _update_body(pp, bp, sp, offs, n, k, rho, min_scale, False)
    else:
        _update_body(pp, bp, sp, offs, n, k, rho, min_scale, True)


def _scalar(x: Tensor, device) -> Tensor:
    return x.reshape(1).to(device=device, dtype=torch.float32)


class _Tables:
    """One launch group's tables (a :class:`Launch`, which callers cache: see
    :func:`swgl.kernels.cached_plan`) and what every kernel call takes from them."""

    def __init__(self, lau: Launch) -> None:
        self.lau = lau

    def _args(self):
        lau = self.lau
        return lau.ptrs, lau.T, lau.blocks, lau.nblocks, lau.numels

    def _two_sums(self, kernel, k: Tensor, hp: Hyper, **dtype) -> Tensor:
        """A kernel's two per-program partial sums, totalled over the group: shape (2,)."""
        lau = self.lau
        partials = torch.empty(2, lau.nblocks, device=lau.device, dtype=torch.float32)
        kernel[lau.grid()](
            *self._args(), _scalar(k, lau.device), partials, 1.0 / hp.max_boost,
            ALIGNED=lau.aligned, BLOCK_=BLOCK, num_warps=NUM_WARPS, **dtype,
        )
        return partials.sum(1)


class Group(_Tables):
    """The before phase over one launch group: ``lau`` holds (params, grads, stabilities)."""

    def __init__(self, lau: Launch, found: Tensor | None) -> None:
        super().__init__(lau)
        self.found = None if found is None else _scalar(found, self.lau.device)

    def ema(self, hp: Hyper, grad_scale: float, g2: bool = False) -> Tensor:
        """The EMA update; returns the per-tensor sums of the new ``s`` ([T]), and with
        ``g2`` also those of ``min((g / scale)^2, R_MAX)`` ([2, T]: one partials buffer, one
        reduction)."""
        lau = self.lau
        shape = (2, lau.nblocks) if g2 else (lau.nblocks,)
        partials = torch.empty(shape, device=lau.device, dtype=torch.float32)
        _ema_kernel[lau.grid()](
            *self._args(), partials if self.found is None else self.found, partials,
            1.0 - hp.alpha, 1.0 / grad_scale, G_DTYPE=lau.g_dtype, ALIGNED=lau.aligned,
            HAS_FOUND=self.found is not None, G2=g2, BLOCK_=BLOCK, num_warps=NUM_WARPS,
        )
        return segment_sums(lau, partials)

    def grad_sums(self, k: Tensor, hp: Hyper) -> Tensor:
        """``(-sum(g^2), -sum(c g^2))`` over the group."""
        return self._two_sums(_gsums_kernel, k, hp, G_DTYPE=self.lau.g_dtype)

    def rescale_grads(self, k: Tensor, rho: Tensor, hp: Hyper) -> None:
        lau = self.lau
        kp = _scalar(k, lau.device)
        _grad_kernel[lau.grid()](
            *self._args(), kp if self.found is None else self.found, kp,
            _scalar(rho, lau.device), 1.0 / hp.max_boost, G_DTYPE=lau.g_dtype,
            ALIGNED=lau.aligned, HAS_FOUND=self.found is not None, BLOCK_=BLOCK,
            num_warps=NUM_WARPS,
        )


class Update(_Tables):
    """The after phase over one launch group: ``lau`` holds (params, snapshots, stabilities,
    grads)."""

    def sums(self, k: Tensor, hp: Hyper) -> Tensor:
        """``(sum(g u), sum(c g u))`` over the group."""
        return self._two_sums(_usums_kernel, k, hp, P_DTYPE=self.lau.p_dtype)

    def apply(self, k: Tensor, rho: Tensor, hp: Hyper) -> None:
        lau = self.lau
        _update_kernel[lau.grid()](
            *self._args(), _scalar(k, lau.device), _scalar(rho, lau.device), 1.0 / hp.max_boost,
            P_DTYPE=lau.p_dtype, ALIGNED=lau.aligned, BLOCK_=BLOCK, num_warps=NUM_WARPS,
        )
