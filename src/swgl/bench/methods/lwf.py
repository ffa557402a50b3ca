"""LwF (Li & Hoiem 2017): distil the previous model's outputs on the current inputs.

Task-IL distils each previous task's head separately; otherwise it distils over the classes
of the previous tasks (all outputs in domain-IL and in streams).
"""

from __future__ import annotations

import copy
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor

from swgl.bench.methods.base import Method, MethodSpec


def distill(new: Tensor, old: Tensor, temperature: float) -> Tensor:
    """T^2 * KL(softmax(old / T) || softmax(new / T)), averaged over the batch."""
    return F.kl_div(F.log_softmax(new / temperature, dim=1), F.softmax(old / temperature, dim=1),
                    reduction="batchmean") * temperature**2


class LwF(Method):
    hparams = MappingProxyType({"alpha": 1.0, "temperature": 2.0})

    def __init__(self, model, optimizer, ctx, options) -> None:
        super().__init__(model, optimizer, ctx, options)
        self.old: torch.nn.Module | None = None
        self.heads: list[Tensor] = []

    def begin_task(self, t: int) -> None:
        if t == 0:
            return
        self.old = copy.deepcopy(self.model).eval().requires_grad_(False)
        classes = self.ctx.task_classes
        if classes is None:
            self.heads = [torch.arange(self.ctx.n_outputs)]
        elif self.ctx.masks is not None:
            self.heads = classes[:t]
        else:
            self.heads = [torch.cat(classes[:t]).unique()]

    def task_loss(self, x: Tensor, y: Tensor, tids: Tensor) -> Tensor:
        new = self.model(x)
        masked = new if self.ctx.masks is None else new + self.ctx.masks[tids]
        loss = F.cross_entropy(masked, y)
        if self.old is None:
            return loss
        with torch.no_grad():
            old = self.old(x)
        kd = sum(distill(new[:, h], old[:, h], self.temperature) for h in self.heads)
        return loss + self.alpha * kd / len(self.heads)

    def state_tensors(self):
        return [] if self.old is None else list(self.old.parameters())


SPECS = (MethodSpec("lwf", LwF, "sgd", description="learning without forgetting",
                   tune={"alpha": (0.3, 1.0, 3.0)}),)
