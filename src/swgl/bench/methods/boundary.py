"""SWGL told the true task boundaries: ``optimizer.on_task_boundary()`` at each new task.

An oracle a stream does not have; the defaults study (``drift`` stage) compares it with the
boundary-free default.
"""

from __future__ import annotations

from types import MappingProxyType

from swgl.bench.methods.base import Method, MethodSpec
from swgl.bench.methods.swgl import STRENGTH

__all__ = ["BoundaryAware", "SPECS"]


class BoundaryAware(Method):
    """Plain fine-tuning that calls ``optimizer.on_task_boundary()`` at each boundary."""

    hparams = MappingProxyType({})

    def begin_task(self, t: int) -> None:
        if t > 0:
            self.optimizer.on_task_boundary()


SPECS = tuple(MethodSpec(f"swgl-boundary-{opt}", BoundaryAware, opt, swgl={}, tune=STRENGTH,
                         description=f"SWGL wrapping {opt}, told every task boundary "
                         "(v5 to v7: a consolidation; v1 to v4: a reset)")
              for opt in ("sgd", "adamw"))
