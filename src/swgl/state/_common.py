"""Helpers shared by the compact formats: blocks of a flattened tensor, dither, checks."""

from __future__ import annotations

import torch
from torch import Tensor

_MASK64 = (1 << 64) - 1


def n_blocks(numel: int, block: int) -> int:
    return -(-numel // block)


def padded_blocks(flat: Tensor, block: int, fill: float = 0.0) -> Tensor:
    """``flat`` as ``(n_blocks, block)``, the last block padded with ``fill`` (a copy if padded)."""
    rows = n_blocks(flat.numel(), block)
    pad = rows * block - flat.numel()
    if pad:
        flat = torch.cat([flat, flat.new_full((pad,), fill)])
    return flat.view(rows, block)


def block_means(flat: Tensor, block: int) -> Tensor:
    """Mean of each block of ``block`` consecutive elements (the last one may be shorter)."""
    sums = padded_blocks(flat, block).sum(1)
    counts = torch.full_like(sums, block)
    if flat.numel() % block:
        counts[-1] = flat.numel() % block
    return sums.div_(counts)


def expand_blocks(values: Tensor, block: int, numel: int) -> Tensor:
    """A fresh flat tensor of ``numel`` elements, each equal to its block's value."""
    return values[:, None].expand(values.numel(), block).reshape(-1)[:numel].clone()


def local(t: Tensor) -> Tensor:
    """The tensor itself, or a DTensor's local shard (which aliases its storage)."""
    to_local = getattr(t, "to_local", None)
    return t if to_local is None else to_local()


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def dither_seed(entry: dict[str, Tensor], shape: torch.Size, salt: int) -> int:
    """A seed that depends on the param's step and shape only.

    The noise is then a pure function of the saved state, so stochastic rounding never
    touches the global RNG (dropout, data order) and training resumes identically from a
    checkpoint. Params of one shape share a noise pattern at a given step; each one's
    rounding is still unbiased over steps.
    """
    step = entry.get("step")
    x = _splitmix64(salt)
    for v in (int(step.item()) if step is not None else 0, *shape):
        x = _splitmix64(x ^ v)
    return x >> 1  # manual_seed takes a non-negative int64


def uniform(numel: int, device: torch.device, seed: int) -> Tensor:
    """``numel`` fp32 samples in [0, 1) from a generator seeded with ``seed``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return torch.rand(numel, generator=gen, device=device, dtype=torch.float32)


def check_tensor(
    t: object,
    what: str,
    dtype: torch.dtype,
    shape: tuple[int, ...],
    *,
    finite: bool = True,
    nonnegative: bool = True,
) -> None:
    """A loaded state tensor must be a tensor of ``dtype`` and ``shape`` with sane values."""
    if not isinstance(t, Tensor):
        raise ValueError(f"{what} must be a tensor, got {type(t).__name__}")
    if t.is_meta:  # its values cannot be checked (or copied): fail here, not mid-install
        raise ValueError(f"{what} is on the meta device: it holds no data to load")
    if t.dtype != dtype:
        raise ValueError(f"{what} must have dtype {dtype}, got {t.dtype}")
    if tuple(t.shape) != tuple(shape):
        raise ValueError(
            f"{what} has shape {tuple(t.shape)}, expected {tuple(shape)} for this param: "
            "this checkpoint belongs to another model or another storage layout"
        )
    if t.is_floating_point() and t.numel():
        if finite and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{what} holds non-finite values")
        if nonnegative and bool((t < 0).any()):
            raise ValueError(f"{what} holds negative values; this state is never negative")
