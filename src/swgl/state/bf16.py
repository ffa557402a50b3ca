"""bf16 stability: 2 bytes per parameter, fp32's exponent range (1e-38 .. 3e38).

bf16 keeps 8 significant bits, so one rounding is off by at most 2^-9 (0.2%) relative. The
EMA ``s = alpha*s + (1-alpha)*r`` moves ``s`` by ``(1-alpha)`` of the gap each step; with
alpha = 0.99 any move smaller than half a bf16 step (a gap under about 39% of ``s``) rounds
away under round-to-nearest, so the estimate stalls. Stochastic rounding keeps every step
unbiased, and measured better (``benchmarks/storage_accuracy.py``: 1.2% against 1.5% mean
error in the modulated gradient, 6.7% against 36% p99 stability error; docs/results.md),
so the registered ``"bf16"`` rounds stochastically; ``Bf16Storage(name, stochastic=False)``
rounds to nearest.

Its rounding noise is unbiased but not free: each step adds a fresh error of up to one bf16
step, which the EMA keeps for about ``1 / (1 - alpha)`` steps, so the stored value's relative
error settles near ``sigma / sqrt(1 - alpha^2)`` (about 7 sigma at alpha = 0.99): about 1.2%
median, measured.
"""

from __future__ import annotations

import torch
from torch import Tensor

from swgl.state._common import check_tensor, dither_seed, local

__all__ = ["Bf16Storage", "to_bf16_stochastic"]


def to_bf16_stochastic(x: Tensor, seed: int) -> Tensor:
    """Round fp32 ``x`` to bf16, up with probability equal to the dropped fraction."""
    bits = x.contiguous().view(torch.int32)
    gen = torch.Generator(device=x.device)
    gen.manual_seed(seed)
    noise = torch.randint(
        0, 1 << 16, x.shape, generator=gen, device=x.device, dtype=torch.int32
    )
    # Adding uniform noise below the kept bits then truncating rounds the magnitude up with
    # probability (dropped bits) / 2^16; the result is exactly representable in bf16.
    noise.add_(bits).bitwise_and_(-(1 << 16))
    return noise.view(torch.float32).to(torch.bfloat16)


class Bf16Storage:
    """One bf16 tensor per param under ``"stability"``, like fp32's key."""

    keys = ("stability",)

    def __init__(self, name: str, stochastic: bool) -> None:
        self.name = name
        self.stochastic = stochastic

    def init(self, p: Tensor, value: float) -> dict[str, Tensor]:
        return {
            "stability": torch.full_like(
                p, value, dtype=torch.bfloat16, memory_format=torch.preserve_format
            )
        }

    def load(self, entry: dict[str, Tensor], p: Tensor) -> Tensor:
        return entry["stability"].float()

    def store(self, entry: dict[str, Tensor], working: Tensor) -> None:
        if self.stochastic:
            # Under FSDP2 both are DTensors sharded alike: round each rank's shard.
            seed = dither_seed(entry, working.shape, salt=0xBF16)
            local(entry["stability"]).copy_(to_bf16_stochastic(local(working), seed))
        else:
            entry["stability"].copy_(working)

    def check(self, entry: dict[str, Tensor], p: Tensor, index: int) -> None:
        check_tensor(
            entry["stability"], f"stability for param {index}", torch.bfloat16, tuple(p.shape)
        )
