"""SI (Zenke et al. 2017): importance = path integral of -g * dw, normalised per task."""

from __future__ import annotations

from types import MappingProxyType

import torch
from torch import Tensor

from swgl.bench.methods.base import Batches, Method, MethodSpec


class SI(Method):
    hparams = MappingProxyType({"c": 0.5, "xi": 0.1})

    def __init__(self, model, optimizer, ctx, options) -> None:
        super().__init__(model, optimizer, ctx, options)
        named = dict(self.model.named_parameters())
        self.omega = {k: torch.zeros_like(v) for k, v in named.items()}
        self.path = {k: torch.zeros_like(v) for k, v in named.items()}
        self.anchor = {k: v.detach().clone() for k, v in named.items()}  # start of the task
        self._grads: dict[str, Tensor] = {}
        self._before: dict[str, Tensor] = {}

    def penalty(self) -> Tensor | float:
        named = dict(self.model.named_parameters())
        return self.c * sum((self.omega[k] * (named[k] - self.anchor[k]).square()).sum()
                            for k in named)

    def before_step(self) -> None:
        # The raw gradient, before SWGL (if any) modulates it inside optimizer.step().
        for k, p in self.model.named_parameters():
            if p.grad is not None:
                self._grads[k] = p.grad.detach().clone()
                self._before[k] = p.detach().clone()

    def after_step(self, x, y, tids) -> None:
        for k, p in self.model.named_parameters():
            if k in self._grads:
                self.path[k] -= self._grads[k] * (p.detach() - self._before[k])
        self._grads.clear()
        self._before.clear()

    def end_task(self, t: int, batches: Batches) -> None:
        for k, p in self.model.named_parameters():
            delta = p.detach() - self.anchor[k]
            # Clamped at 0: a negative path integral would reward drifting away.
            self.omega[k] += (self.path[k] / (delta.square() + self.xi)).clamp_(min=0.0)
            self.path[k].zero_()
            self.anchor[k] = p.detach().clone()

    def state_tensors(self):
        return [*self.omega.values(), *self.path.values(), *self.anchor.values()]


SPECS = (MethodSpec("si", SI, "adam", description="synaptic intelligence",
                   tune={"c": (0.1, 1.0, 10.0)}),)
