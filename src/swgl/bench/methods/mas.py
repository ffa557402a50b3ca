"""MAS (Aljundi et al. 2018): importance = mean |d ||f(x)||^2 / dw| over task samples."""

from __future__ import annotations

from types import MappingProxyType

import torch
from torch import Tensor

from swgl.bench.methods._importance import per_sample_mean
from swgl.bench.methods.base import Batches, Method, MethodSpec


class MAS(Method):
    hparams = MappingProxyType({"lam": 1.0, "samples": 500})

    def __init__(self, model, optimizer, ctx, options) -> None:
        super().__init__(model, optimizer, ctx, options)
        self.omega: dict[str, Tensor] = {}
        self.anchor: dict[str, Tensor] = {}

    def end_task(self, t: int, batches: Batches) -> None:
        def sq_norm(out: Tensor, y: Tensor, mask: Tensor) -> Tensor:
            return (out * (mask == 0)).square().sum()  # task-IL: only the task's own head

        new = per_sample_mean(self.model, sq_norm, batches(), int(self.samples), torch.abs,
                              self.ctx.masks)
        self.omega = {k: self.omega.get(k, 0.0) + v for k, v in new.items()}
        self.anchor = {k: v.detach().clone() for k, v in self.model.named_parameters()}

    def penalty(self) -> Tensor | float:
        if not self.omega:
            return 0.0
        named = dict(self.model.named_parameters())
        return self.lam * sum((self.omega[k] * (named[k] - self.anchor[k]).square()).sum()
                              for k in named)

    def state_tensors(self):
        return [*self.omega.values(), *self.anchor.values()]


SPECS = (MethodSpec("mas", MAS, "adam", description="memory-aware synapses",
                   tune={"lam": (0.1, 1.0, 10.0)}),)
