"""A tiny classification problem shared by the optimizer tests."""

import torch
import torch.nn as nn


def toy_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def toy_batches(n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen))
            for _ in range(n)]


def toy_loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)
