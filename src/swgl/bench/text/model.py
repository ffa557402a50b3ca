"""A small decoder-only byte-level transformer (GPT-2 style, pre-norm, tied embeddings).

Its forward returns logits as ``(batch, 256, length)``, the class-second layout that
``F.cross_entropy(logits, targets)`` takes with ``targets`` of shape ``(batch, length)``, so
the harness's strategies (plain, replay, EWC, ...) compute their loss unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ByteTransformer", "ModelSize"]

VOCAB = 256


@dataclass(frozen=True)
class ModelSize:
    d_model: int
    n_layers: int
    n_heads: int
    seq_len: int

    def __post_init__(self) -> None:
        for name in ("d_model", "n_layers", "n_heads", "seq_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} must be divisible by "
                             f"n_heads={self.n_heads}")


class _Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).unbind(2)
        att = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                             v.transpose(1, 2), is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, n, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class ByteTransformer(nn.Module):
    """Bytes ``(batch, length)`` in, next-byte logits ``(batch, 256, length)`` out."""

    def __init__(self, size: ModelSize) -> None:
        super().__init__()
        self.size = size
        d = size.d_model
        self.tok = nn.Embedding(VOCAB, d)
        self.pos = nn.Embedding(size.seq_len, d)
        self.blocks = nn.ModuleList(_Block(d, size.n_heads) for _ in range(size.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, VOCAB, bias=False)
        self.head.weight = self.tok.weight  # tied, as in GPT-2
        self.apply(self._init)
        for block in self.blocks:  # GPT-2's scaled init of the residual projections
            for layer in (block.proj, block.out):
                nn.init.normal_(layer.weight, std=0.02 / (2 * size.n_layers) ** 0.5)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[1]
        if n > self.size.seq_len:
            raise ValueError(f"input length {n} exceeds seq_len={self.size.seq_len}")
        h = self.tok(x) + self.pos(torch.arange(n, device=x.device))
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h)).transpose(1, 2)
