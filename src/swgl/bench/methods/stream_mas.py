r"""Streaming MAS (boundary-free), as in mohmdelsayed/upgd ``core/optim/mas.py``.

The reference code takes the importance from the loss gradient (not, as offline MAS does,
from the gradient of the output norm), as an EMA of its magnitude, bias-corrected::

    F = beta_i * F + (1 - beta_i) * |g|,    c_t = 1 / (1 - beta_i^t)

and the pull toward the slow weight EMA is ``_stream_anchor``'s. Defaults (``lam=0.1``,
``beta_weight=0.9999``, ``beta_importance=0.999``) are the reference's tuned values on
input-permuted MNIST (``experiments/statistics_input_permuted_mnist.py``). State: anchor + F,
8 B/param in fp32, plus the optimizer's.
"""

from __future__ import annotations

from types import MappingProxyType

import torch
from torch import Tensor

from swgl.bench.methods._stream_anchor import StreamAnchor, ema_
from swgl.bench.methods.base import MethodSpec

__all__ = ["SPECS", "StreamMAS"]


class StreamMAS(StreamAnchor):
    hparams = MappingProxyType({**StreamAnchor.hparams, "lam": 0.1})
    # Spans the pilot of docs/results.md (lam 0.1-1 best, 100 collapsed).
    tune_grid = MappingProxyType({"lam": (0.01, 0.1, 1.0, 10.0)})

    def __init__(self, model, optimizer, ctx, options) -> None:
        super().__init__(model, optimizer, ctx, options)
        self.omega = [torch.zeros_like(p) for p in self.params]

    def importance(self, idx: list[int], params: list[Tensor],
                   grads: list[Tensor]) -> tuple[list[Tensor], float]:
        omega = [self.omega[i] for i in idx]
        ema_(omega, torch._foreach_abs(grads), self.beta_importance)
        return omega, 1.0 / (1.0 - self.beta_importance ** self.t)

    def state_tensors(self):
        return [*self.anchor, *self.omega]


SPECS: tuple[MethodSpec, ...] = (
    MethodSpec("stream-mas", StreamMAS, "sgd",
               description="streaming MAS: |g| EMA, pull to a slow weight EMA (UPGD repo), SGD"),
    MethodSpec("stream-mas-adam", StreamMAS, "adam",
               description="streaming MAS with Adam"),
)
