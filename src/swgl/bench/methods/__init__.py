"""Continual-learning methods, one module each, and the tables built from them.

Each method module exposes ``SPECS`` (a tuple of :class:`MethodSpec`) and, if it defines an
optimizer, ``OPTIMIZERS``; importing a module registers nothing. :data:`METHODS` and
:data:`OPTIMIZERS` are built here, explicitly, from :data:`MODULES`: to add a method, write its
module and list it there.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import ModuleType

import torch.nn as nn

from swgl.bench.methods import (
    agem,
    bgd,
    boundary,
    ewc,
    l2_init,
    lwf,
    mas,
    mesu,
    naive,
    online_ewc,
    optim,
    replay,
    si,
    stream_ewc,
    stream_mas,
    stream_si,
    swgl,
    upgd,
)
from swgl.bench.methods.base import Context, Method, MethodSpec, build_method
from swgl.bench.methods.optim import OptimizerInfo

__all__ = ["METHODS", "MODULES", "OPTIMIZERS", "Context", "Method", "MethodSpec",
           "OptimizerInfo", "build_tables", "make_method"]

#: The method modules, in the order ``--list-methods`` shows them.
MODULES: tuple[ModuleType, ...] = (naive, swgl, boundary, ewc, online_ewc, si, mas, replay, agem,
                                   lwf, upgd, stream_ewc, stream_mas, stream_si, mesu, bgd,
                                   l2_init)


def build_tables(modules: Iterable[ModuleType]) -> tuple[dict[str, MethodSpec],
                                                          dict[str, OptimizerInfo]]:
    """``(methods, optimizers)`` from the modules' ``SPECS`` and ``OPTIMIZERS``.

    Raises ValueError on a name defined twice or a spec whose optimizer is unknown.
    """
    modules = tuple(modules)
    optimizers: dict[str, OptimizerInfo] = dict(optim.OPTIMIZERS)
    for module in modules:
        for name, info in getattr(module, "OPTIMIZERS", {}).items():
            if name in optimizers:
                raise ValueError(f"optimizer {name!r} of {module.__name__} is defined twice")
            optimizers[name] = info
    methods: dict[str, MethodSpec] = {}
    for module in modules:
        for spec in module.SPECS:
            if spec.name in methods:
                raise ValueError(f"method {spec.name!r} of {module.__name__} is defined twice")
            if spec.optimizer not in optimizers:
                raise ValueError(f"method {spec.name!r}: optimizer must be one of "
                                 f"{sorted(optimizers)}, got {spec.optimizer!r}")
            methods[spec.name] = spec
    return methods, optimizers


METHODS, OPTIMIZERS = build_tables(MODULES)


def make_method(spec: MethodSpec, model: nn.Module, ctx: Context,
                optimizers: Mapping[str, OptimizerInfo] = OPTIMIZERS) -> Method:
    """Build ``spec``'s optimizer (SWGL-wrapped if asked) and strategy for ``model``."""
    if spec.optimizer not in optimizers:
        raise ValueError(f"optimizer must be one of {sorted(optimizers)}, got {spec.optimizer!r}")
    return build_method(spec, optimizers[spec.optimizer], model, ctx)
