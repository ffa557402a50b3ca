"""Models: an MLP (default) and a small CNN, both built from the input shape."""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

__all__ = ["MODELS", "build_model"]


def mlp(shape: tuple[int, int, int], n_out: int, hidden: int) -> nn.Module:
    """Two hidden ReLU layers, as in the Split/Permuted MNIST literature."""
    c, h, w = shape
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(c * h * w, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, n_out),
    )


def cnn(shape: tuple[int, int, int], n_out: int, hidden: int) -> nn.Module:
    """Two conv blocks (32, 64 channels) and a hidden linear layer; works from 8x8 up."""
    c, h, w = shape
    return nn.Sequential(
        nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * (h // 4) * (w // 4), hidden), nn.ReLU(),
        nn.Linear(hidden, n_out),
    )


MODELS: dict[str, Callable[[tuple[int, int, int], int, int], nn.Module]] = {"mlp": mlp, "cnn": cnn}


def build_model(name: str, shape: tuple[int, int, int], n_out: int, hidden: int) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    return MODELS[name](shape, n_out, hidden)
