"""Base optimizers a method can use: default learning rate, tuning range, baseline method."""

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
    """How to build an optimizer, and how ``swgl bench --tune`` treats its methods.

    ``lr_range`` is the (low, high) learning rate span the tuning grid covers, log-spaced;
    ``baseline`` names the plain method every method on this optimizer is compared with
    (its delta ACC in the tuned table); ``tune_grid`` is the strength grid of methods that
    declare none (an optimizer's own option, e.g. a noise scale: option -> values).
    """

    cls: type[Optimizer]
    lr: float                                                 # default learning rate
    kwargs: Mapping[str, Any] = field(default_factory=dict)   # fixed extra arguments
    lr_range: tuple[float, float] = (3e-3, 3.0)
    baseline: str = "naive-sgd"
    tune_grid: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)


#: The torch optimizers; method modules that define their own add them via ``OPTIMIZERS``.
#: The lr spans are three decades around the one-pass optima measured (issue 12: SGD 0.02,
#: SWGL + SGD 0.1 or more since it damps the step; AdamW 1e-4); presets move them.
OPTIMIZERS: dict[str, OptimizerInfo] = {
    "sgd": OptimizerInfo(torch.optim.SGD, 0.1, lr_range=(3e-3, 3.0), baseline="naive-sgd"),
    "sgd-momentum": OptimizerInfo(torch.optim.SGD, 0.01, {"momentum": 0.9},
                                  lr_range=(3e-4, 0.3), baseline="naive-sgd-momentum"),
    "adam": OptimizerInfo(torch.optim.Adam, 1e-3, lr_range=(1e-5, 1e-2), baseline="naive-adam"),
    "adamw": OptimizerInfo(torch.optim.AdamW, 1e-3, {"weight_decay": 0.01},
                           lr_range=(1e-5, 1e-2), baseline="naive-adamw"),
}


def build_optimizer(info: OptimizerInfo, params: Iterable[torch.Tensor], lr: float,
                    kwargs: Mapping[str, Any], swgl: Mapping[str, Any] | None) -> Optimizer:
    """``info``'s optimizer; wrapped as ``SWGL.wrap(base, **swgl)`` unless ``swgl`` is None."""
    base = info.cls(params, lr=lr, **{**info.kwargs, **kwargs})
    return base if swgl is None else SWGL.wrap(base, **swgl)
