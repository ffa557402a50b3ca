"""L2 Init (Kumar et al. 2023): a pull toward the initial weights, ``lam/2 * ||w - w_0||^2``.

No boundaries needed: the anchor is the weights at construction, which keeps the network
near a trainable point (plasticity) and limits drift from it (forgetting).
"""

from __future__ import annotations

from types import MappingProxyType

from torch import Tensor

from swgl.bench.methods.base import Method, MethodSpec

__all__ = ["SPECS", "L2Init"]


class L2Init(Method):
    hparams = MappingProxyType({"lam": 0.01})
    tune_grid = MappingProxyType({"lam": (1e-3, 1e-2, 1e-1)})

    def __init__(self, model, optimizer, ctx, options) -> None:
        super().__init__(model, optimizer, ctx, options)
        self.init = {k: v.detach().clone() for k, v in self.model.named_parameters()}

    def penalty(self) -> Tensor | float:
        named = dict(self.model.named_parameters())
        return 0.5 * self.lam * sum((named[k] - w0).square().sum() for k, w0 in self.init.items())

    def state_tensors(self):
        return list(self.init.values())


SPECS = (MethodSpec("l2-init", L2Init, "adam", description="L2 pull toward the initial weights"),)
