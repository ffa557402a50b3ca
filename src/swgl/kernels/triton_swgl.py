# ruff: noqa: SIM108  (constexpr branches of the kernels read better as blocks)
r"""Triton kernels: the SWGL rules and the fused SWGL + AdamW / SGD steps, over whole lists.

This module imports Triton at import time; :mod:`swgl.kernels` imports it only when a CUDA
call takes the fused path.

Layout. One launch covers a whole list of tensors of one dtype pair:

* ``ptrs[k * T + i]`` is the address of tensor ``i`` of kind ``k`` (0 param, 1 grad,
  2 stability, 3 first optimizer buffer, 4 second one; the buffers fp32, or the param's dtype
  as torch's optimizers keep theirs: :class:`swgl.SWGLWrapper` steps torch's state);
* ``blocks[b]`` / ``blocks[B + b]`` map program ``b`` to tensor ``i`` and the int64 offset of
  its tile of ``BLOCK`` elements (tensors over 2^31 bytes are fine); full tiles take the
  unmasked, 16-byte vectorised path when every address is 16-byte aligned;
* per-tensor scalars (step counts, v2's sums) are read from device tensors and the skip flag
  ``found_inf`` is read by every program, so nothing here waits for the host.

v2 needs two per-tensor reductions that depend on each other (the weight RMS feeds the EMA,
the EMA's mean feeds the factor), so it takes five launches whatever the list's length:
partial sums of w^2, their per-tensor totals, the EMA update with partial sums of log s_hat
(and counts of s_hat > 0), their totals (v2's reference level is the geometric mean of the
active elements), and the elementwise pass (which
is also where a fused optimizer steps).
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from swgl.rules.base import Context, Hyper
from swgl.rules.normalised import R_MAX, TINY, WEIGHT_FLOOR, reference

#: Elements per program and warps per program of the elementwise kernels.
BLOCK = 4096
NUM_WARPS = 8
_RBLOCK = 1024
# the rules' constants, as compile-time values the kernels can read
_FLOOR = tl.constexpr(WEIGHT_FLOOR)
_RMAX = tl.constexpr(R_MAX)
_TINY_C = tl.constexpr(TINY)
_FLT_MAX = tl.constexpr(3.4028234663852886e38)

RULE_IDS = {"v1": 0, "v1-paper": 1, "v2": 2}
SIGNALS = {"relative": 0, "utility": 1, "fisher": 2}
OPT_NONE, OPT_ADAMW, OPT_SGD = 0, 1, 2
MODES = {"grad": 0, "update": 1}

_TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}


# --------------------------------------------------------------------------------------------
# device helpers
# --------------------------------------------------------------------------------------------


@triton.jit
def _ptr(ptrs, k, T, i, DTYPE: tl.constexpr, ALIGNED: tl.constexpr):
    p = tl.load(ptrs + k * T + i).to(tl.pointer_type(DTYPE))
    if ALIGNED:
        p = tl.multiple_of(p, 16)
    return p


@triton.jit
def _ld(ptr, offs, mask, MASKED: tl.constexpr):
    if MASKED:
        x = tl.load(ptr + offs, mask=mask, other=0.0)
    else:
        x = tl.load(ptr + offs)
    return x.to(tl.float32)


@triton.jit
def _st(ptr, offs, x, mask, MASKED: tl.constexpr):
    if MASKED:
        tl.store(ptr + offs, x.to(ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(ptr + offs, x.to(ptr.dtype.element_ty))


@triton.jit
def _bias_correction(t, ln_beta):
    # 1 - beta^t, in fp64 so that beta near 1 loses nothing to cancellation
    return (1.0 - tl.exp(t.to(tl.float64) * ln_beta)).to(tl.float32)


@triton.jit
def _v1_coeffs(g, w, s, alpha, eps, max_boost, lam_scaled, inv_scale,
               PAPER: tl.constexpr, HAS_LAMBDA: tl.constexpr):
    """v1 / v1-paper: the new EMA, and (c, k) such that the rule's output is c * g + k * w."""
    ri = tl.abs(g * inv_scale) / (tl.abs(w) + eps)
    s = s * alpha + (1.0 - alpha) * ri
    if PAPER:
        c = 1.0 / tl.minimum(s, max_boost)
    else:
        c = tl.minimum(1.0 / (s + eps), max_boost)
    if HAS_LAMBDA:
        k = tl.maximum(s - 1.0, 0.0) * lam_scaled
    else:
        k = tl.zeros_like(s)
    return s, c, k


@triton.jit
def _v2_coeffs(s, inv_bc, m, lam, min_scale, max_boost, HAS_LAMBDA: tl.constexpr):
    """v2, from the updated EMA and the geometric mean ``m`` of s_hat: (c, k) such that the
    output is c * g + k * w (in true units)."""
    s_hat = s * inv_bc
    c = m / (s_hat + _TINY_C)
    c = tl.minimum(tl.maximum(c, min_scale), max_boost)
    if HAS_LAMBDA:
        excess = s_hat / (m + _TINY_C) - 1.0
        k = lam * tl.minimum(tl.maximum(excess, 0.0), max_boost - 1.0)
    else:
        k = tl.zeros_like(s)
    return c, k


@triton.jit
def _tile_at(blocks, nblocks, numels, t, BLOCK_: tl.constexpr):
    """Tile ``t`` of the table: its tensor ``i``, offsets, the tensor's size, whether full."""
    i = tl.load(blocks + t)
    start = tl.multiple_of(tl.load(blocks + nblocks + t), BLOCK_)
    n = tl.load(numels + i)
    return i, start + tl.arange(0, BLOCK_), n, start + BLOCK_ <= n


@triton.jit
def _tile(blocks, nblocks, numels, found, HAS_FOUND: tl.constexpr, BLOCK_: tl.constexpr):
    pid = tl.program_id(0)
    i, offs, n, full = _tile_at(blocks, nblocks, numels, pid, BLOCK_)
    skip = False
    if HAS_FOUND:
        skip = tl.load(found) != 0.0
    return pid, i, offs, n, full, skip


# --------------------------------------------------------------------------------------------
# kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _flag_nonfinite(g, found):
    """found[0] = 1 if any element of ``g`` is inf or NaN (never resets it)."""
    bad = tl.max((~(tl.abs(g) <= _FLT_MAX)).to(tl.int32), axis=0)
    if bad > 0:
        tl.store(found, 1.0)


@triton.jit
def _nonfinite_body(gp, offs, n, found, MASKED: tl.constexpr):
    _flag_nonfinite(_ld(gp, offs, offs < n, MASKED), found)


@triton.jit
def _nonfinite_kernel(ptrs, T, blocks, nblocks, numels, found,
                      G_DTYPE: tl.constexpr, ALIGNED: tl.constexpr, BLOCK_: tl.constexpr):
    """found[0] = 1 if any grad element is inf or NaN (found is never reset here)."""
    pid, i, offs, n, full, skip = _tile(blocks, nblocks, numels, found, False, BLOCK_)
    gp = _ptr(ptrs, 1, T, i, G_DTYPE, ALIGNED)
    if full:
        _nonfinite_body(gp, offs, n, found, False)
    else:
        _nonfinite_body(gp, offs, n, found, True)


@triton.jit
def _sumsq_body(pp, gp, offs, n, found, partials, pid, CHECK: tl.constexpr,
                MASKED: tl.constexpr):
    mask = offs < n
    w = _ld(pp, offs, mask, MASKED)
    tl.store(partials + pid, tl.sum(w * w, axis=0))
    if CHECK:
        _flag_nonfinite(_ld(gp, offs, mask, MASKED), found)


@triton.jit
def _sumsq_kernel(ptrs, T, blocks, nblocks, numels, partials, found,
                  P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, CHECK: tl.constexpr,
                  ALIGNED: tl.constexpr, BLOCK_: tl.constexpr):
    """v2 pass 1: per-program partial sums of w^2 (and, with CHECK, the non-finite check)."""
    pid, i, offs, n, full, skip = _tile(blocks, nblocks, numels, found, False, BLOCK_)
    pp = _ptr(ptrs, 0, T, i, P_DTYPE, ALIGNED)
    gp = _ptr(ptrs, 1, T, i, G_DTYPE, ALIGNED)
    if full:
        _sumsq_body(pp, gp, offs, n, found, partials, pid, CHECK, False)
    else:
        _sumsq_body(pp, gp, offs, n, found, partials, pid, CHECK, True)


@triton.jit
def _segsum_kernel(partials, first, out, nblocks, T, RBLOCK: tl.constexpr):
    """out[r, i] = sum of partials[r, first[i]:first[i+1]], accumulated in fp64, in a fixed
    order (no atomics: deterministic)."""
    i = tl.program_id(0)
    row = partials + tl.program_id(1) * nblocks
    lo = tl.load(first + i)
    hi = tl.load(first + i + 1)
    acc = tl.zeros([RBLOCK], dtype=tl.float64)
    for k in range(lo, hi, RBLOCK):
        idx = k + tl.arange(0, RBLOCK)
        acc += tl.load(row + idx, mask=idx < hi, other=0.0).to(tl.float64)
    tl.store(out + tl.program_id(1) * T + i, tl.sum(acc, axis=0).to(tl.float32))


@triton.jit
def _v2_ema_body(pp, gp, sp, offs, n, delta, inv_bc, alpha, inv_scale, partials, counts, pid,
                 SIGNAL: tl.constexpr, MASKED: tl.constexpr):
    mask = offs < n
    w = _ld(pp, offs, mask, MASKED)
    g = _ld(gp, offs, mask, MASKED) * inv_scale
    s = _ld(sp, offs, mask, MASKED)
    if SIGNAL == 0:
        r = tl.abs(g) / (tl.abs(w) + delta)
    elif SIGNAL == 1:
        r = tl.abs(g * w)
    else:
        r = g * g
    r = tl.minimum(r, _RMAX)
    s = s * alpha + (1.0 - alpha) * r
    _st(sp, offs, s, mask, MASKED)
    s_hat = s * inv_bc
    active = mask & (s_hat > 0.0)  # the geometric mean runs over the active elements only
    tl.store(partials + pid, tl.sum(tl.where(active, tl.log(tl.where(active, s_hat, 1.0)), 0.0),
                                    axis=0))
    tl.store(counts + pid, tl.sum(active.to(tl.float32), axis=0))


@triton.jit
def _v2_ema_kernel(ptrs, T, blocks, nblocks, numels, gnumels, steps, sumsq, partials, counts,
                   found,
                   alpha, ln_alpha, eps, inv_scale,
                   P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, SIGNAL: tl.constexpr,
                   HAS_FOUND: tl.constexpr, ALIGNED: tl.constexpr, BLOCK_: tl.constexpr):
    """v2 pass 2: s = alpha s + (1 - alpha) r, and per-program sums of log s_hat and counts of
    s_hat > 0."""
    pid, i, offs, n, full, skip = _tile(blocks, nblocks, numels, found, HAS_FOUND, BLOCK_)
    if not skip:
        pp = _ptr(ptrs, 0, T, i, P_DTYPE, ALIGNED)
        gp = _ptr(ptrs, 1, T, i, G_DTYPE, ALIGNED)
        sp = _ptr(ptrs, 2, T, i, tl.float32, ALIGNED)
        delta = 0.0
        if SIGNAL == 0:
            gn = tl.load(gnumels + i).to(tl.float32)
            delta = eps + _FLOOR * tl.sqrt(tl.load(sumsq + i) / gn)
        inv_bc = 1.0 / _bias_correction(tl.load(steps + i).to(tl.float32), ln_alpha)
        if full:
            _v2_ema_body(pp, gp, sp, offs, n, delta, inv_bc, alpha, inv_scale, partials, counts,
                         pid, SIGNAL, False)
        else:
            _v2_ema_body(pp, gp, sp, offs, n, delta, inv_bc, alpha, inv_scale, partials, counts,
                         pid, SIGNAL, True)


@triton.jit
def _opt_load(mp, vp, offs, mask, like, OPT: tl.constexpr, HAS_MOMENTUM: tl.constexpr,
              MASKED: tl.constexpr):
    """The optimizer's buffers (AdamW: the two moments; SGD: the momentum buffer, first);
    ``like`` stands in for those it has not."""
    m1 = like
    m2 = like
    if OPT == 1 or HAS_MOMENTUM:
        m1 = _ld(mp, offs, mask, MASKED)
    if OPT == 1:
        m2 = _ld(vp, offs, mask, MASKED)
    return m1, m2


@triton.jit
def _opt_store(mp, vp, offs, m1, m2, mask, OPT: tl.constexpr, HAS_MOMENTUM: tl.constexpr,
               MASKED: tl.constexpr):
    if OPT == 1 or HAS_MOMENTUM:
        _st(mp, offs, m1, mask, MASKED)
    if OPT == 1:
        _st(vp, offs, m2, mask, MASKED)


@triton.jit
def _opt_moments(w, d, m1, m2, t, beta1, beta2, wd, momentum, dampening, OPT: tl.constexpr):
    """The buffers after this step, from their old values and the gradient ``d``."""
    if OPT == 1:
        m1 = m1 + (1.0 - beta1) * (d - m1)
        m2 = m2 * beta2 + (1.0 - beta2) * d * d
    else:
        d = d + wd * w
        m1 = tl.where(t == 1.0, d, m1 * momentum + (1.0 - dampening) * d)
    return m1, m2


@triton.jit
def _opt_target(w, d, m1, m2, t, lr, ln_beta1, ln_beta2, opt_eps, wd, momentum,
                OPT: tl.constexpr, HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr):
    """The param after the optimizer's step, from the buffers' new values."""
    if OPT == 1:
        denom = tl.sqrt(m2) / tl.sqrt(_bias_correction(t, ln_beta2)) + opt_eps
        u = (m1 / denom) / _bias_correction(t, ln_beta1)
        w_new = w * (1.0 - lr * wd)
    else:
        u = d + wd * w
        if HAS_MOMENTUM:
            if NESTEROV:
                u = u + momentum * m1
            else:
                u = m1
        w_new = w
    return w_new - lr * u


@triton.jit
def _opt_step(w, d, mp, vp, offs, mask, t, lr, beta1, beta2, ln_beta1, ln_beta2, opt_eps, wd,
              momentum, dampening, OPT: tl.constexpr, HAS_MOMENTUM: tl.constexpr,
              NESTEROV: tl.constexpr, MASKED: tl.constexpr):
    """One AdamW (OPT 1) or SGD (OPT 2) step on fp32 ``w`` with gradient ``d``: stores the
    buffers, returns the new param."""
    m1, m2 = _opt_load(mp, vp, offs, mask, d, OPT, HAS_MOMENTUM, MASKED)
    m1, m2 = _opt_moments(w, d, m1, m2, t, beta1, beta2, wd, momentum, dampening, OPT)
    _opt_store(mp, vp, offs, m1, m2, mask, OPT, HAS_MOMENTUM, MASKED)
    return _opt_target(w, d, m1, m2, t, lr, ln_beta1, ln_beta2, opt_eps, wd, momentum, OPT,
                       HAS_MOMENTUM, NESTEROV)


@triton.jit
def _step_body(pp, gp, sp, mp, vp, offs, n, t, m_ref,
               alpha, ln_alpha, eps, min_scale, max_boost, lam, grad_scale, inv_scale,
               lr, beta1, beta2, ln_beta1, ln_beta2, opt_eps, wd, momentum, dampening,
               RULE: tl.constexpr, OPT: tl.constexpr, MODE: tl.constexpr,
               HAS_LAMBDA: tl.constexpr, HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr,
               MASKED: tl.constexpr):
    mask = offs < n
    w = _ld(pp, offs, mask, MASKED)
    g = _ld(gp, offs, mask, MASKED)
    s = _ld(sp, offs, mask, MASKED)
    if RULE == 2:
        inv_bc = 1.0 / _bias_correction(t, ln_alpha)
        c, k = _v2_coeffs(s, inv_bc, m_ref, lam, min_scale, max_boost, HAS_LAMBDA)
        # v2 works on the true gradient g / S and hands back S times its output
        k = k * grad_scale
    else:
        s, c, k = _v1_coeffs(g, w, s, alpha, eps, max_boost, lam * grad_scale, inv_scale,
                             RULE == 1, HAS_LAMBDA)
        _st(sp, offs, s, mask, MASKED)
    if OPT == 0:
        if MODE == 0:
            _st(gp, offs, c * g + k * w, mask, MASKED)
        else:
            _st(gp, offs, g + k * w, mask, MASKED)
    else:
        if MODE == 0:
            d = c * g + k * w
        else:
            d = g + k * w
        w_new = _opt_step(w, d, mp, vp, offs, mask, t, lr, beta1, beta2, ln_beta1, ln_beta2,
                          opt_eps, wd, momentum, dampening, OPT, HAS_MOMENTUM, NESTEROV, MASKED)
        if MODE == 1:  # the update rescaled: w_new + (1 - c) (w - w_new), as the rule's after()
            w_new = w_new + (1.0 - c) * (w - w_new)
        _st(pp, offs, w_new, mask, MASKED)


@triton.jit
def _step_ptrs(ptrs, T, i, P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, B_DTYPE: tl.constexpr,
               OPT: tl.constexpr, HAS_MOMENTUM: tl.constexpr, ALIGNED: tl.constexpr):
    """Tensor ``i``'s param, grad, stability and optimizer buffers (of dtype ``B_DTYPE``; the
    stability stands in for the buffers the optimizer has not)."""
    pp = _ptr(ptrs, 0, T, i, P_DTYPE, ALIGNED)
    gp = _ptr(ptrs, 1, T, i, G_DTYPE, ALIGNED)
    sp = _ptr(ptrs, 2, T, i, tl.float32, ALIGNED)
    mp = sp
    vp = sp
    if OPT == 1 or HAS_MOMENTUM:
        mp = _ptr(ptrs, 3, T, i, B_DTYPE, ALIGNED)
    if OPT == 1:
        vp = _ptr(ptrs, 4, T, i, B_DTYPE, ALIGNED)
    return pp, gp, sp, mp, vp


@triton.jit
def _step_kernel(ptrs, T, blocks, nblocks, numels, gnumels, steps, sums, counts, found,
                 alpha, ln_alpha, eps, min_scale, max_boost, lam, grad_scale, inv_scale,
                 lr, beta1, beta2, ln_beta1, ln_beta2, opt_eps, wd, momentum, dampening,
                 P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, B_DTYPE: tl.constexpr,
                 RULE: tl.constexpr, OPT: tl.constexpr, MODE: tl.constexpr,
                 HAS_LAMBDA: tl.constexpr,
                 HAS_MOMENTUM: tl.constexpr, NESTEROV: tl.constexpr, HAS_FOUND: tl.constexpr,
                 ALIGNED: tl.constexpr, BLOCK_: tl.constexpr):
    """The elementwise pass: v1's whole rule, or v2's factor from the updated EMA; then write
    the modulated grad (OPT 0) or step the param with AdamW (OPT 1) or SGD (OPT 2)."""
    pid, i, offs, n, full, skip = _tile(blocks, nblocks, numels, found, HAS_FOUND, BLOCK_)
    if not skip:
        pp, gp, sp, mp, vp = _step_ptrs(ptrs, T, i, P_DTYPE, G_DTYPE, B_DTYPE, OPT,
                                        HAS_MOMENTUM, ALIGNED)
        t = tl.load(steps + i).to(tl.float32)
        m_ref = 0.0
        if RULE == 2:
            count = tl.load(counts + i)
            m_ref = tl.where(count > 0.0, tl.exp(tl.load(sums + i) / tl.maximum(count, 1.0)), 1.0)
        if full:
            _step_body(pp, gp, sp, mp, vp, offs, n, t, m_ref, alpha, ln_alpha, eps, min_scale,
                       max_boost,
                       lam, grad_scale, inv_scale, lr, beta1, beta2, ln_beta1, ln_beta2,
                       opt_eps, wd, momentum, dampening, RULE, OPT, MODE, HAS_LAMBDA,
                       HAS_MOMENTUM, NESTEROV, False)
        else:
            _step_body(pp, gp, sp, mp, vp, offs, n, t, m_ref, alpha, ln_alpha, eps, min_scale,
                       max_boost,
                       lam, grad_scale, inv_scale, lr, beta1, beta2, ln_beta1, ln_beta2,
                       opt_eps, wd, momentum, dampening, RULE, OPT, MODE, HAS_LAMBDA,
                       HAS_MOMENTUM, NESTEROV, True)


@triton.jit
def _rescale_body(pp, bp, sp, offs, n, inv_bc, m_ref, min_scale, max_boost,
                  MASKED: tl.constexpr):
    mask = offs < n
    w = _ld(pp, offs, mask, MASKED)
    b = _ld(bp, offs, mask, MASKED)
    s = _ld(sp, offs, mask, MASKED)
    keep = 1.0 - m_ref / (s * inv_bc + _TINY_C)
    keep = tl.minimum(tl.maximum(keep, 1.0 - max_boost), 1.0 - min_scale)
    _st(pp, offs, w + keep * (b - w), mask, MASKED)


@triton.jit
def _rescale_kernel(ptrs, T, blocks, nblocks, numels, steps, refs, ln_alpha, min_scale,
                    max_boost, P_DTYPE: tl.constexpr, ALIGNED: tl.constexpr,
                    BLOCK_: tl.constexpr):
    """v2's after phase: w = w + (1 - c) (w_before - w), c from the stored EMA (kind 1 holds
    the snapshots)."""
    pid, i, offs, n, full, skip = _tile(blocks, nblocks, numels, refs, False, BLOCK_)
    pp = _ptr(ptrs, 0, T, i, P_DTYPE, ALIGNED)
    bp = _ptr(ptrs, 1, T, i, P_DTYPE, ALIGNED)
    sp = _ptr(ptrs, 2, T, i, tl.float32, ALIGNED)
    t = tl.maximum(tl.load(steps + i).to(tl.float32), 1.0)
    inv_bc = 1.0 / _bias_correction(t, ln_alpha)
    m_ref = tl.load(refs + i)
    if full:
        _rescale_body(pp, bp, sp, offs, n, inv_bc, m_ref, min_scale, max_boost, False)
    else:
        _rescale_body(pp, bp, sp, offs, n, inv_bc, m_ref, min_scale, max_boost, True)


# --------------------------------------------------------------------------------------------
# host side
# --------------------------------------------------------------------------------------------


def _ln(x: float) -> float:
    return math.log(x) if x > 0.0 else -math.inf


@functools.lru_cache(maxsize=32)
def _layout(numels: tuple[int, ...], device: torch.device, block: int):
    """Block table, tensor sizes and each tensor's first block; depends on shapes only."""
    n = torch.tensor(numels, dtype=torch.int64)
    counts = (n + block - 1) // block
    first = torch.zeros(len(numels) + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=first[1:])
    total = int(first[-1])
    owner = torch.repeat_interleave(torch.arange(len(numels)), counts)
    start = (torch.arange(total) - first[:-1][owner]) * block
    blocks = torch.cat([owner, start]).to(device)
    return blocks, total, n.to(device), first.to(device=device, dtype=torch.int32)


@functools.cache
def _programs(device: torch.device) -> int:
    """Eight programs per SM (8 warps each: a full SM's worth in flight); 8 under the CPU's
    interpreter."""
    if device.type != "cuda":
        return 8
    return 8 * torch.cuda.get_device_properties(device).multi_processor_count


class Launch:
    """The tables of one launch group: tensors of one device and one (param, grad) dtype pair.

    ``tensors`` are the lists [params, grads, stabilities, *optimizer buffers] (the buffers of
    one dtype, :attr:`b_dtype`). ``steps`` are
    host step counters (copied in the same transfer as the pointers) or None, in which case
    the caller sets :attr:`steps` to a device tensor before the first kernel that reads it.
    """

    def __init__(self, tensors: list[list[Tensor]], steps: list[Tensor] | None = None,
                 numels: tuple[int, ...] | None = None):
        params = tensors[0]
        self.device = params[0].device
        self.T = len(params)
        self.p_dtype = _TL_DTYPES[params[0].dtype]
        self.g_dtype = _TL_DTYPES[tensors[1][0].dtype]
        self.b_dtype = _TL_DTYPES[tensors[3][0].dtype] if len(tensors) > 3 else tl.float32
        addrs = [t.data_ptr() for kind in tensors for t in kind]
        self.aligned = all(a % 16 == 0 for a in addrs)
        local = tuple(p.numel() for p in params)
        self.blocks, self.nblocks, self.numels, self.first = _layout(local, self.device, BLOCK)
        host = list(addrs)
        if steps is not None:
            host += [int(s) for s in steps]
        if numels is not None and tuple(numels) != local:
            host += list(numels)
        table = self._to_device(host)
        self.ptrs = table
        end = len(addrs)
        self.steps = self.numels  # placeholder until set
        if steps is not None:
            self.steps = table[end:end + self.T]
            end += self.T
        self.gnumels = table[end:end + self.T] if end < len(host) else self.numels

    def grid(self):
        return (self.nblocks,)

    def strided_grid(self):
        """A grid for kernels gated on a device flag that is mostly 0 (v6's consolidation, at
        shifts only): a few programs per SM stride over the tiles, so a step without a shift
        costs a launch, not an early exit per tile (129 us a step on BERT-base, H200)."""
        return (min(self.nblocks, _programs(self.device)),)

    def _to_device(self, host: list[int]) -> Tensor:
        if self.device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            # a graph would copy from a host buffer that is gone by its next replay
            raise RuntimeError("a Triton launch table was built during a CUDA graph capture")
        table = torch.tensor(host, dtype=torch.int64)
        if self.device.type == "cuda":  # pinned, so the copy neither blocks nor syncs
            table = table.pin_memory()
        return table.to(self.device, non_blocking=True)

    def readdress(self, tensors: list[list[Tensor]]) -> None:
        """Point the tables at ``tensors``: the lists the launch was built for, or others of
        the same sizes and dtypes (fresh grads), in a launch without step counters."""
        addrs = [t.data_ptr() for kind in tensors for t in kind]
        self.aligned = all(a % 16 == 0 for a in addrs)
        self.ptrs = self._to_device(addrs)


def _signal(hp: Hyper) -> str:
    return getattr(hp, "signal", "relative")


def _min_scale(hp: Hyper) -> float:
    return getattr(hp, "min_scale", 1.0 / hp.max_boost)


def _needs_reduce(ctx: Context) -> bool:
    return ctx.reduce_sum is not Context().reduce_sum


def nonfinite(lau: Launch, found: Tensor) -> None:
    """Set found[0] = 1 if any grad of the launch is non-finite (never resets it)."""
    _nonfinite_kernel[lau.grid()](lau.ptrs, lau.T, lau.blocks, lau.nblocks, lau.numels, found,
                                  G_DTYPE=lau.g_dtype, ALIGNED=lau.aligned, BLOCK_=BLOCK,
                                  num_warps=NUM_WARPS)


def segment_sums(lau: Launch, partials: Tensor) -> Tensor:
    """Per-tensor sums of per-program partials: ``partials`` is ``[..., nblocks]`` (one row
    per quantity), the result ``[..., T]``. Per tensor, not per program, because shards
    all-reduce them (``Context.reduce_sum``) and a tensor's shards may span different numbers
    of programs. One launch for all rows (an ``index_add_`` cost 18 us on BERT-base, H200)."""
    rows = partials.numel() // lau.nblocks
    out = torch.empty((*partials.shape[:-1], lau.T), device=lau.device, dtype=torch.float32)
    _segsum_kernel[(lau.T, rows)](partials, lau.first, out, lau.nblocks, lau.T,
                                  RBLOCK=_RBLOCK, num_warps=4)
    return out


def _per_tensor_sum(lau: Launch, partials: Tensor, ctx: Context) -> Tensor:
    out = segment_sums(lau, partials)
    return ctx.reduce_sum(out) if _needs_reduce(ctx) else out


def v2_weight_sums(lau: Launch, ctx: Context, found: Tensor | None = None) -> Tensor:
    """v2 pass 1: per-tensor sums of w^2; with ``found``, also the non-finite check."""
    partials = torch.empty(lau.nblocks, device=lau.device, dtype=torch.float32)
    _sumsq_kernel[lau.grid()](lau.ptrs, lau.T, lau.blocks, lau.nblocks, lau.numels, partials,
                              found if found is not None else partials, P_DTYPE=lau.p_dtype,
                              G_DTYPE=lau.g_dtype, CHECK=found is not None,
                              ALIGNED=lau.aligned, BLOCK_=BLOCK, num_warps=NUM_WARPS)
    return _per_tensor_sum(lau, partials, ctx)


def v2_ema(lau: Launch, hp: Hyper, ctx: Context, sumsq: Tensor,
           found: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """v2 pass 2: the EMA update in place; returns the per-tensor sums of log s_hat over the
    elements with s_hat > 0, and their counts."""
    # zeros: a skipped step (found) writes no partials, and m must stay finite
    partials = torch.zeros(2, lau.nblocks, device=lau.device, dtype=torch.float32)
    _v2_ema_kernel[lau.grid()](
        lau.ptrs, lau.T, lau.blocks, lau.nblocks, lau.numels, lau.gnumels, lau.steps, sumsq,
        partials[0], partials[1], found if found is not None else partials, hp.alpha,
        _ln(hp.alpha), hp.eps,
        1.0 / ctx.grad_scale, P_DTYPE=lau.p_dtype, G_DTYPE=lau.g_dtype,
        SIGNAL=SIGNALS[_signal(hp)], HAS_FOUND=found is not None, ALIGNED=lau.aligned,
        BLOCK_=BLOCK, num_warps=NUM_WARPS,
    )
    return _per_tensor_sum(lau, partials[0], ctx), _per_tensor_sum(lau, partials[1], ctx)


def step(lau: Launch, rule: str, hp: Hyper, ctx: Context, *,
         sums: tuple[Tensor, Tensor] | None = None,
         found: Tensor | None = None, opt: int = OPT_NONE, mode: str = "grad",
         lr: float = 0.0, beta1: float = 0.0, beta2: float = 0.0, opt_eps: float = 0.0,
         weight_decay: float = 0.0, momentum: float = 0.0, dampening: float = 0.0,
         nesterov: bool = False) -> None:
    """The elementwise pass (see :func:`_step_kernel`); v2 needs ``sums`` from :func:`v2_ema`."""
    dummy = lau.numels
    scalars, flags = opt_args(opt, lr=lr, beta1=beta1, beta2=beta2, opt_eps=opt_eps,
                              weight_decay=weight_decay, momentum=momentum,
                              dampening=dampening, nesterov=nesterov)
    _step_kernel[lau.grid()](
        lau.ptrs, lau.T, lau.blocks, lau.nblocks, lau.numels, lau.gnumels, lau.steps,
        *(sums if sums is not None else (dummy, dummy)), found if found is not None else dummy,
        hp.alpha, _ln(hp.alpha), hp.eps, _min_scale(hp), hp.max_boost, hp.lambda_reg,
        ctx.grad_scale, 1.0 / ctx.grad_scale, *scalars,
        P_DTYPE=lau.p_dtype, G_DTYPE=lau.g_dtype, B_DTYPE=lau.b_dtype, RULE=RULE_IDS[rule],
        MODE=MODES[mode], HAS_LAMBDA=hp.lambda_reg > 0.0,
        HAS_FOUND=found is not None, ALIGNED=lau.aligned, BLOCK_=BLOCK, num_warps=NUM_WARPS,
        **flags,
    )


def opt_args(opt: int, *, lr: float = 0.0, beta1: float = 0.0, beta2: float = 0.0,
             opt_eps: float = 0.0, weight_decay: float = 0.0, momentum: float = 0.0,
             dampening: float = 0.0, nesterov: bool = False) -> tuple[tuple, dict]:
    """The optimizer's scalar arguments of a kernel, in order, and its compile-time flags."""
    scalars = (lr, beta1, beta2, _ln(beta1), _ln(beta2), opt_eps, weight_decay, momentum,
               dampening)
    flags = dict(OPT=opt, HAS_MOMENTUM=opt == OPT_SGD and momentum != 0.0, NESTEROV=nesterov)
    return scalars, flags


def _launch(tensors: list[list[Tensor]], steps: list[Tensor], numels=None) -> Launch:
    on_device = steps[0].device == tensors[0][0].device
    lau = Launch(tensors, None if on_device else steps, numels)
    if on_device:
        lau.steps = torch.stack([t.reshape(()) for t in steps])
    return lau


def swgl_pass(params, grads, stabilities, steps, hp: Hyper, ctx: Context, *, rule: str):
    """A rule's before phase over one launch group (the rule signature, plus ``rule``).

    Returns the per-param ``m`` in ``mode="update"`` (v2), else None.
    """
    lau = _launch([params, grads, stabilities], steps, ctx.numels)
    found = None if ctx.found is None else ctx.found.reshape(1).to(lau.device, torch.float32)
    sums = None
    if rule == "v2":
        # only the "relative" signal reads the weight RMS
        sumsq = v2_weight_sums(lau, ctx) if _signal(hp) == "relative" else lau.numels
        sums = v2_ema(lau, hp, ctx, sumsq, found)
    if not (rule == "v2" and hp.mode == "update" and hp.lambda_reg == 0.0):
        step(lau, rule, hp, ctx, sums=sums, found=found, mode=hp.mode)
    return list(reference(*sums).unbind()) if sums is not None and hp.mode == "update" else None


def rescale_pass(params, snapshots, stabilities, steps, refs, hp: Hyper) -> None:
    """v2's after phase over one launch group."""
    lau = _launch([params, snapshots, stabilities], steps)
    _rescale_kernel[lau.grid()](
        lau.ptrs, lau.T, lau.blocks, lau.nblocks, lau.numels, lau.steps,
        torch.stack([m.reshape(()) for m in refs]).float(), _ln(hp.alpha), hp.min_scale,
        hp.max_boost, P_DTYPE=lau.p_dtype, ALIGNED=lau.aligned, BLOCK_=BLOCK,
        num_warps=NUM_WARPS,
    )
