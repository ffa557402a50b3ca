"""Continual-learning methods, one module each; importing this package fills METHODS."""

from swgl.bench.methods import (  # noqa: F401  (each module registers its methods)
    agem,
    ewc,
    lwf,
    mas,
    naive,
    online_ewc,
    replay,
    si,
    swgl,
    upgd,
)
from swgl.bench.methods import bgd, mesu, stream_ewc, stream_mas, stream_si
from swgl.bench.methods.base import (
    METHODS,
    Context,
    Method,
    MethodSpec,
    derive,
    make_method,
    register,
)
from swgl.bench.methods.optim import OPTIMIZERS

# Modules in the target design: data only, registered here (the lead reconciles this list).
for _module in (stream_ewc, stream_mas, stream_si, mesu, bgd):
    OPTIMIZERS.update(getattr(_module, "OPTIMIZERS", {}))
    for _spec in _module.SPECS:
        register(_spec)

__all__ = ["METHODS", "OPTIMIZERS", "Context", "Method", "MethodSpec", "derive", "make_method",
           "register"]
