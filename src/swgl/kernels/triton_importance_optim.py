# ruff: noqa: SIM108  (constexpr branches of the kernels read better as blocks)
r"""Triton kernels of ``v4`` (:mod:`swgl.rules.importance`) fused into swgl.optim's AdamW / SGD
step, over a param group's launch groups (the tables of :class:`swgl.kernels.triton_swgl.Launch`:
kinds 0 param, 1 grad, 2 stability, 3 and 4 the optimizer's buffers, fp32 or the param's dtype).

Three passes, whatever the number of params; ``k``, ``rho``, the step counters and the skip
flag are read from device memory, so nothing waits for the host:

1. :func:`check`: the non-finite flag and the partial sums of the new ``s``, the EMA
   computed in registers and not yet stored (a grad further on may still be non-finite;
   reads ``g``, ``s``), and for v5's detector those of ``min(g^2, R_MAX)``;
2. sums (:func:`step`): mode ``"update"``: stores the new ``s`` and the optimizer's buffers,
   and sums ``g u`` and ``c g u`` with ``u`` the optimizer's step (weight decay included;
   reads ``w``, ``g``, ``s`` and the buffers). Mode ``"grad"``: sums ``-g^2`` and ``-c g^2``
   (reads ``g``, ``s``);
3. apply (:func:`step`, the same kernel): mode ``"update"``: ``u`` again from the new
   buffers, then ``w = w + rho c u`` (reads ``w``, ``s``, the buffers, and ``g`` for SGD's;
   writes ``w``). Mode ``"grad"``: stores the new ``s`` and steps the optimizer with the
   gradient ``rho c g``.

``u`` is the step as the param's dtype stores it (``round(w') - w``), as the foreach path
reads it back from the param. Between the passes, ``k`` and ``rho`` are a few ops on device
scalars (:func:`swgl.rules.importance.progress_ratio`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from swgl.kernels.triton_importance import _capped_g2, _ema, _factor
from swgl.kernels.triton_swgl import (
    BLOCK,
    MODES,
    NUM_WARPS,
    Launch,
    _flag_nonfinite,
    _ld,
    _opt_load,
    _opt_moments,
    _opt_step,
    _opt_store,
    _opt_target,
    _ptr,
    _st,
    _step_ptrs,
    _tile,
    opt_args,
)
from swgl.rules.base import Context, Hyper
from swgl.rules.importance import _strength, progress_ratio

__all__ = ["check", "step"]


@triton.jit
def _stored(x, ptr):
    """``x`` as the tensor at ``ptr`` stores it, back in fp32."""
    return x.to(ptr.dtype.element_ty).to(tl.float32)


@triton.jit
def _check_body(gp, sp, offs, n, found, one_minus_alpha, MASKED: tl.constexpr):
    mask = offs < n
    g = _ld(gp, offs, mask, MASKED)
    _flag_nonfinite(g, found)
    return (tl.sum(_ema(g, _ld(sp, offs, mask, MASKED), one_minus_alpha), axis=0),
            tl.sum(_capped_g2(g), axis=0))


@triton.jit
def _check_kernel(ptrs, T, blocks, nblocks, numels, found, partials, one_minus_alpha,
                  G_DTYPE: tl.constexpr, ALIGNED: tl.constexpr, G2: tl.constexpr,
                  BLOCK_: tl.constexpr):
    pid, i, offs, n, full, skip = _tile(blocks, nblocks, numels, found, False, BLOCK_)
    gp = _ptr(ptrs, 1, T, i, G_DTYPE, ALIGNED)
    sp = _ptr(ptrs, 2, T, i, tl.float32, ALIGNED)
    if full:
        total, g2 = _check_body(gp, sp, offs, n, found, one_minus_alpha, False)
    else:
        total, g2 = _check_body(gp, sp, offs, n, found, one_minus_alpha, True)
    tl.store(partials + pid, total)
    if G2:  # v5's detector reads it: the capped g^2 of the same read of g
        tl.store(partials + nblocks + pid, g2)


@triton.jit
def _sums_body(pp, gp, sp, mp, vp, offs, n, t, k, skip, one_minus_alpha, min_scale,
               lr, beta1, beta2, ln_beta1, ln_beta2, opt_eps, wd, momentum, dampening,
               MODE: tl.constexpr, OPT: tl.constexpr, HAS_MOMENTUM: tl.constexpr,
               NESTEROV: tl.constexpr, MASKED: tl.constexpr):
    mask = offs < n
    g = _ld(gp, offs, mask, MASKED)
    s = _ema(g, _ld(sp, offs, mask, MASKED), one_minus_alpha)
    c = _factor(s, k, min_scale)
    if MODE == 1:
        w = _ld(pp, offs, mask, MASKED)
        m1, m2 = _opt_load(mp, vp, offs, mask, g, OPT, HAS_MOMENTUM, MASKED)
        m1, m2 = _opt_moments(w, g, m1, m2, t, beta1, beta2, wd, momentum, dampening, OPT)
        if not skip:
            _st(sp, offs, s, mask, MASKED)
            _opt_store(mp, vp, offs, m1, m2, mask, OPT, HAS_MOMENTUM, MASKED)
        w_new = _opt_target(w, g, m1, m2, t, lr, ln_beta1, ln_beta2, opt_eps, wd, momentum,
                            OPT, HAS_MOMENTUM, NESTEROV)
        x = g * (_stored(w_new, pp) - w)
    else:
        x = -(g * g)
    return tl.sum(x, axis=0), tl.sum(c * x, axis=0)


@triton.jit
def _apply_body(pp, gp, sp, mp, vp, offs, n, t, k, rho, one_minus_alpha, min_scale,
                lr, beta1, beta2, ln_beta1, ln_beta2, opt_eps, wd, momentum, dampening,
                MODE: tl.constexpr, OPT: tl.constexpr, HAS_MOMENTUM: tl.constexpr,
                NESTEROV: tl.constexpr, MASKED: tl.constexpr):
    mask = offs < n
    w = _ld(pp, offs, mask, MASKED)
    s = _ld(sp, offs, mask, MASKED)
    if MODE == 1:  # s and the buffers are the new ones (pass 2)
        g = w  # AdamW's step does not read the grad
        if OPT == 2:
            g = _ld(gp, offs, mask, MASKED)
        m1, m2 = _opt_load(mp, vp, offs, mask, g, OPT, HAS_MOMENTUM, MASKED)
        w_new = _opt_target(w, g, m1, m2, t, lr, ln_beta1, ln_beta2, opt_eps, wd, momentum,
                            OPT, HAS_MOMENTUM, NESTEROV)
        w_new = w + (rho * _factor(s, k, min_scale)) * (_stored(w_new, pp) - w)
    else:
        g = _ld(gp, offs, mask, MASKED)
        s = _ema(g, s, one_minus_alpha)
        _st(sp, offs, s, mask, MASKED)
        w_new = _opt_step(w, (rho * _factor(s, k, min_scale)) * g, mp, vp, offs, mask, t,
                          lr, beta1, beta2, ln_beta1, ln_beta2, opt_eps, wd, momentum,
                          dampening, OPT, HAS_MOMENTUM, NESTEROV, MASKED)
    _st(pp, offs, w_new, mask, MASKED)


@triton.jit
def _pass_kernel(ptrs, T, blocks, nblocks, numels, steps, found, kp, rhop, partials,
                 one_minus_alpha, min_scale,
                 lrp, beta1, beta2, ln_beta1, ln_beta2, opt_eps, wd, momentum, dampening,
                 P_DTYPE: tl.constexpr, G_DTYPE: tl.constexpr, B_DTYPE: tl.constexpr,
                 MODE: tl.constexpr, OPT: tl.constexpr, HAS_MOMENTUM: tl.constexpr,
                 NESTEROV: tl.constexpr, APPLY: tl.constexpr, ALIGNED: tl.constexpr,
                 BLOCK_: tl.constexpr):
    """Pass 2: per-program partial sums of (g u, c g u) (update) or (-g^2, -c g^2) (grad).
    Pass 3 (APPLY): w = w + rho c u (update), or the optimizer's step with rho c g (grad)."""
    pid, i, offs, n, full, skip = _tile(blocks, nblocks, numels, found, True, BLOCK_)
    pp, gp, sp, mp, vp = _step_ptrs(ptrs, T, i, P_DTYPE, G_DTYPE, B_DTYPE, OPT, HAS_MOMENTUM,
                                    ALIGNED)
    t = tl.load(steps + i).to(tl.float32)
    k = tl.load(kp)
    lr = tl.load(lrp)   # a device scalar: a CUDA graph replays with the scheduler's lr
    if APPLY:
        rho = tl.load(rhop)
        if not skip:
            if full:
                _apply_body(pp, gp, sp, mp, vp, offs, n, t, k, rho, one_minus_alpha, min_scale,
                            lr, beta1, beta2, ln_beta1, ln_beta2, opt_eps, wd, momentum,
                            dampening, MODE, OPT, HAS_MOMENTUM, NESTEROV, False)
            else:
                _apply_body(pp, gp, sp, mp, vp, offs, n, t, k, rho, one_minus_alpha, min_scale,
                            lr, beta1, beta2, ln_beta1, ln_beta2, opt_eps, wd, momentum,
                            dampening, MODE, OPT, HAS_MOMENTUM, NESTEROV, True)
    else:
        if full:
            a, b = _sums_body(pp, gp, sp, mp, vp, offs, n, t, k, skip, one_minus_alpha,
                              min_scale, lr, beta1, beta2, ln_beta1, ln_beta2, opt_eps, wd,
                              momentum, dampening, MODE, OPT, HAS_MOMENTUM, NESTEROV, False)
        else:
            a, b = _sums_body(pp, gp, sp, mp, vp, offs, n, t, k, skip, one_minus_alpha,
                              min_scale, lr, beta1, beta2, ln_beta1, ln_beta2, opt_eps, wd,
                              momentum, dampening, MODE, OPT, HAS_MOMENTUM, NESTEROV, True)
        tl.store(partials + pid, a)
        tl.store(partials + nblocks + pid, b)


def check(lau: Launch, hp: Hyper, found: Tensor, g2: bool = False) -> Tensor:
    """Pass 1 over one launch group: sets ``found`` on a non-finite grad and returns the
    per-program partial sums of the new ``s`` ([P]), and with ``g2`` also those of
    ``min(g^2, R_MAX)`` ([2, P]: v5's detector reads them, :func:`g2_sum`)."""
    partials = torch.empty((2, lau.nblocks) if g2 else (lau.nblocks,), device=lau.device,
                           dtype=torch.float32)
    _check_kernel[lau.grid()](
        lau.ptrs, lau.T, lau.blocks, lau.nblocks, lau.numels, found, partials, 1.0 - hp.alpha,
        G_DTYPE=lau.g_dtype, ALIGNED=lau.aligned, G2=g2, BLOCK_=BLOCK, num_warps=NUM_WARPS,
    )
    return partials


def g2_sum(partials: list[Tensor]) -> Tensor:
    """The param group's sum of ``min(g^2, R_MAX)`` from :func:`check`'s partial sums (taken
    with ``g2``), a device 0-d."""
    return (partials[0][1] if len(partials) == 1 else torch.cat([p[1] for p in partials])).sum()


def step(launches: list[Launch], partials: list[Tensor], numel: int, hp: Hyper,
         found: Tensor, *, opt: int, **opt_kw) -> Tensor:
    """Passes 2 and 3 over a param group's launch groups (their ``steps`` set, already counted),
    with the partial sums :func:`check` returned and the group's element count ``numel``;
    ``opt`` and ``opt_kw`` as :func:`swgl.kernels.triton_swgl.step` takes them, but ``lr``
    may be a 1-element fp32 device tensor (read by the kernels: swgl.optim's CUDA graphs).
    Returns ``k`` (a device 0-d), which v5 reads."""
    scalars, flags = opt_args(opt, **opt_kw)
    lr = scalars[0]
    if not isinstance(lr, Tensor):
        lr = torch.full((1,), lr, device=launches[0].device, dtype=torch.float32)
    scalars = (lr, *scalars[1:])
    partials = [p[0] if p.dim() == 2 else p for p in partials]   # the sums of s (check's)
    k = _strength(partials[0] if len(partials) == 1 else torch.cat(partials), numel, hp,
                  Context()).reshape(1)

    def run(lau: Launch, rho: Tensor, out: Tensor, apply: bool) -> None:
        _pass_kernel[lau.grid()](
            lau.ptrs, lau.T, lau.blocks, lau.nblocks, lau.numels, lau.steps, found, k, rho, out,
            1.0 - hp.alpha, 1.0 / hp.max_boost, *scalars, P_DTYPE=lau.p_dtype,
            G_DTYPE=lau.g_dtype, B_DTYPE=lau.b_dtype, MODE=MODES[hp.mode], APPLY=apply,
            ALIGNED=lau.aligned, BLOCK_=BLOCK, num_warps=NUM_WARPS, **flags,
        )

    sums = []
    for lau in launches:
        out = torch.empty(2, lau.nblocks, device=lau.device, dtype=torch.float32)
        run(lau, k, out, False)
        sums.append(out.sum(1))
    full, damped = sums[0] if len(sums) == 1 else torch.stack(sums).sum(0)
    rho = progress_ratio(full, damped, hp).reshape(1)
    for lau in launches:
        run(lau, rho, k, True)
    return k.reshape(())
