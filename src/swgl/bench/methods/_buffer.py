"""A reservoir-sampling memory of (x, y, task id), kept on the model's device."""

from __future__ import annotations

import torch
from torch import Tensor


class ReservoirBuffer:
    """Every sample seen so far has an equal chance ``capacity / seen`` to be in memory."""

    def __init__(self, capacity: int, generator: torch.Generator) -> None:
        self.capacity = int(capacity)
        self.seen = 0
        self.gen = generator
        self.x: Tensor | None = None
        self.y: Tensor | None = None
        self.t: Tensor | None = None

    def __len__(self) -> int:
        return min(self.seen, self.capacity)

    def add(self, x: Tensor, y: Tensor, tids: Tensor) -> None:
        if self.x is None:
            self.x = x.new_empty((self.capacity, *x.shape[1:]))
            self.y = y.new_empty((self.capacity, *y.shape[1:]))  # labels or sequences
            self.t = tids.new_empty((self.capacity,))
        for i in range(len(x)):
            if self.seen < self.capacity:
                slot = self.seen
            else:
                slot = int(torch.randint(0, self.seen + 1, (), generator=self.gen))
                if slot >= self.capacity:
                    slot = -1
            if slot >= 0:
                self.x[slot], self.y[slot], self.t[slot] = x[i], y[i], tids[i]
            self.seen += 1

    def sample(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        idx = torch.randperm(len(self), generator=self.gen)[:n].to(self.x.device)
        return self.x[idx], self.y[idx], self.t[idx]

    def tensors(self) -> list[Tensor]:
        return [] if self.x is None else [self.x, self.y, self.t]


def make_generator() -> torch.Generator:
    """A CPU generator seeded from the global torch RNG, so runs stay reproducible."""
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, ())))
