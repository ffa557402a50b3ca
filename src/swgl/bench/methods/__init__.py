"""Continual-learning methods, one module each; importing this package fills METHODS."""

from swgl.bench.methods import (  # noqa: F401  (each module registers its methods)
    agem,
    ewc,
    l2_init,
    lwf,
    mas,
    naive,
    online_ewc,
    replay,
    si,
    swgl,
    upgd,
)
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

__all__ = ["METHODS", "OPTIMIZERS", "Context", "Method", "MethodSpec", "derive", "make_method",
           "register"]
