r"""Streaming SI (boundary-free), as in mohmdelsayed/upgd ``core/optim/synaptic_intelligence.py``.

An online path integral: EMAs of the work ``g * (w_prev - w)`` and of the displacement
``w_prev - w``, where ``w_prev`` is the weight one step earlier (so, as in the reference, the
current gradient is paired with the previous step's move), bias-corrected by ``b = 1 - beta_i^t``::

    W = beta_i * W + (1 - beta_i) * g * (w_prev - w)
    D = beta_i * D + (1 - beta_i) * (w_prev - w)
    F = max(0, (W / b) / ((D / b)^2 + xi)),    c_t = 1

and the pull toward the slow weight EMA is ``_stream_anchor``'s. Two departures from the
reference code, both in its first steps or its sign: ``w_prev`` starts at the initial weights
(the reference starts it at zero, a spurious first move of ``-w``), and ``F`` is clamped at 0
(a negative importance would push away from the anchor; offline SI in ``si.py`` clamps too).
``xi`` is the reference's ``eps`` (renamed as in ``si.py``: Adam has its own ``eps``).
Defaults (``lam=10``, ``beta_weight=beta_importance=0.99``, ``xi=1e-3``) are the reference's
tuned values on input-permuted MNIST (``experiments/statistics_input_permuted_mnist.py``).
State: anchor, W, D and w_prev, 16 B/param in fp32, plus the optimizer's.
"""

from __future__ import annotations

from types import MappingProxyType

import torch
from torch import Tensor

from swgl.bench.methods._checks import check_range
from swgl.bench.methods._stream_anchor import StreamAnchor, ema_
from swgl.bench.methods.base import MethodSpec

__all__ = ["SPECS", "StreamSI"]


class StreamSI(StreamAnchor):
    hparams = MappingProxyType({"lam": 10.0, "beta_weight": 0.99, "beta_importance": 0.99,
                                "xi": 1e-3})
    # Spans the pilot of docs/results.md (lam 1 best with SGD, 1e3 with Adam).
    tune_grid = MappingProxyType({"lam": (1.0, 10.0, 100.0, 1000.0)})

    def __init__(self, model, optimizer, ctx, options) -> None:
        super().__init__(model, optimizer, ctx, options)
        self.xi = check_range("xi", self.xi, 0.0, low_open=True)
        self.work = [torch.zeros_like(p) for p in self.params]
        self.disp = [torch.zeros_like(p) for p in self.params]
        self.prev = [p.detach().clone() for p in self.params]

    def importance(self, idx: list[int], params: list[Tensor],
                   grads: list[Tensor]) -> tuple[list[Tensor], float]:
        work, disp, prev = ([buf[i] for i in idx] for buf in (self.work, self.disp, self.prev))
        move = torch._foreach_sub(prev, params)                    # w_prev - w
        torch._foreach_mul_(work, self.beta_importance)
        torch._foreach_addcmul_(work, grads, move, value=1.0 - self.beta_importance)
        ema_(disp, move, self.beta_importance)
        torch._foreach_copy_(prev, params)
        b = 1.0 - self.beta_importance ** self.t
        den = torch._foreach_mul(disp, disp)
        torch._foreach_div_(den, b * b)
        torch._foreach_add_(den, self.xi)
        fisher = torch._foreach_div(work, den)
        torch._foreach_div_(fisher, b)
        torch._foreach_clamp_min_(fisher, 0.0)
        return fisher, 1.0

    def state_tensors(self):
        return [*self.anchor, *self.work, *self.disp, *self.prev]


SPECS: tuple[MethodSpec, ...] = (
    MethodSpec("stream-si", StreamSI, "sgd",
               description="streaming SI: online path integral, pull to a slow weight EMA "
                           "(UPGD repo), SGD"),
    MethodSpec("stream-si-adam", StreamSI, "adam", description="streaming SI with Adam"),
)
