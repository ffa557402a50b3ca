"""Base optimizers a method can use, with the learning rates tuned in docs/results.md."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim import Optimizer

from swgl import SWGL

__all__ = ["OPTIMIZERS", "OptimizerInfo", "build_optimizer"]


@dataclass(frozen=True)
class OptimizerInfo:
    cls: type[Optimizer]
    lr: float                                            # default learning rate
    kwargs: Mapping[str, Any] = field(default_factory=dict)  # fixed extra arguments


OPTIMIZERS: dict[str, OptimizerInfo] = {
    "sgd": OptimizerInfo(torch.optim.SGD, 0.1),
    "sgd-momentum": OptimizerInfo(torch.optim.SGD, 0.01, {"momentum": 0.9}),
    "adam": OptimizerInfo(torch.optim.Adam, 1e-3),
    "adamw": OptimizerInfo(torch.optim.AdamW, 1e-3, {"weight_decay": 0.01}),
}


def build_optimizer(name: str, params: Iterable[torch.Tensor], lr: float,
                    kwargs: Mapping[str, Any], swgl: Mapping[str, Any] | None) -> Optimizer:
    """``name``'s optimizer; wrapped as ``SWGL.wrap(base, **swgl)`` unless ``swgl`` is None."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    info = OPTIMIZERS[name]
    base = info.cls(params, lr=lr, **{**info.kwargs, **kwargs})
    return base if swgl is None else SWGL.wrap(base, **swgl)
