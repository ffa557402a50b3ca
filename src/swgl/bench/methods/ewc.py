"""EWC (Kirkpatrick et al. 2017): a quadratic penalty per past task, weighted by the Fisher.

The Fisher diagonal is the empirical one (squared per-sample gradients of the log-likelihood
of the true label), from up to ``fisher_samples`` training samples of the finished task.
"""

from __future__ import annotations

from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor

from swgl.bench.methods._importance import per_sample_mean
from swgl.bench.methods.base import Batches, Method, MethodSpec


class EWC(Method):
    hparams = MappingProxyType({"lam": 100.0, "fisher_samples": 500})

    def __init__(self, model, optimizer, ctx, options) -> None:
        super().__init__(model, optimizer, ctx, options)
        self.anchors: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = []

    def fisher(self, batches: Batches) -> dict[str, Tensor]:
        def nll(out: Tensor, y: Tensor, mask: Tensor) -> Tensor:
            return F.cross_entropy((out + mask).unsqueeze(0), y.unsqueeze(0))

        return per_sample_mean(self.model, nll, batches(), int(self.fisher_samples), torch.square,
                               self.ctx.masks)

    def end_task(self, t: int, batches: Batches) -> None:
        params = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        self.anchors.append((self.fisher(batches), params))

    def penalty(self) -> Tensor | float:
        if not self.anchors:
            return 0.0
        total = 0.0
        named = dict(self.model.named_parameters())
        for fisher, anchor in self.anchors:
            total = total + sum((fisher[k] * (named[k] - anchor[k]).square()).sum() for k in named)
        return 0.5 * self.lam * total

    def state_tensors(self):
        return [t for fisher, anchor in self.anchors for d in (fisher, anchor) for t in d.values()]


SPECS = (MethodSpec("ewc", EWC, "adam", description="EWC, one Fisher penalty per task",
                   tune={"lam": (1e2, 1e3, 1e4)}),)
