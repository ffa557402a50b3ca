r"""Streaming EWC (boundary-free), as in mohmdelsayed/upgd ``core/optim/ewc.py``.

The importance is an EMA of the squared minibatch gradient, bias-corrected::

    F = beta_i * F + (1 - beta_i) * g^2,    c_t = 1 / (1 - beta_i^t)

and the pull toward the slow weight EMA is ``_stream_anchor``'s. Defaults (``lam=1``,
``beta_weight=0.9999``, ``beta_importance=0.999``) are the reference's tuned values on
input-permuted MNIST (``experiments/statistics_input_permuted_mnist.py``). State: anchor + F,
8 B/param in fp32, plus the optimizer's.
"""

from __future__ import annotations

from types import MappingProxyType

import torch
from torch import Tensor

from swgl.bench.methods._stream_anchor import StreamAnchor
from swgl.bench.methods.base import MethodSpec

__all__ = ["SPECS", "StreamEWC"]


class StreamEWC(StreamAnchor):
    # Spans the pilot of docs/results.md (lam 1e3 best with SGD and Adam; 1e4 diverged with SGD).
    tune_grid = MappingProxyType({"lam": (1.0, 10.0, 100.0, 1000.0)})

    def __init__(self, model, optimizer, ctx, options) -> None:
        super().__init__(model, optimizer, ctx, options)
        self.fisher = [torch.zeros_like(p) for p in self.params]

    def importance(self, idx: list[int], params: list[Tensor],
                   grads: list[Tensor]) -> tuple[list[Tensor], float]:
        fisher = [self.fisher[i] for i in idx]
        torch._foreach_mul_(fisher, self.beta_importance)
        torch._foreach_addcmul_(fisher, grads, grads, value=1.0 - self.beta_importance)
        return fisher, 1.0 / (1.0 - self.beta_importance ** self.t)

    def state_tensors(self):
        return [*self.anchor, *self.fisher]


SPECS: tuple[MethodSpec, ...] = (
    MethodSpec("stream-ewc", StreamEWC, "sgd",
               description="streaming EWC: g^2 EMA, pull to a slow weight EMA (UPGD repo), SGD"),
    MethodSpec("stream-ewc-adam", StreamEWC, "adam",
               description="streaming EWC with Adam"),
)
