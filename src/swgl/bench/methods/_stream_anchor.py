r"""Boundary-free consolidation toward a slow weight EMA (the stream EWC / MAS / SI peers).

Shared by ``stream_ewc.py``, ``stream_mas.py`` and ``stream_si.py``, which supply the
importance ``F``. After backward and before the optimizer step (``t`` counts steps)::

    w_bar = beta_w * w_bar + (1 - beta_w) * w                       # slow anchor, w_bar_0 = 0
    g    <- g + lam * c_t * F * (w - w_bar / (1 - beta_w^t))         # pull toward the anchor

``c_t`` is the importance's own bias correction (``1 / (1 - beta_i^t)`` for an EMA, 1 for SI).
The pull is the gradient of ``0.5 * lam * sum F (w - w_bar)^2`` with ``F`` and ``w_bar`` held
fixed, so the optimizer sees it like any other gradient: plain SGD gives exactly the update of
mohmdelsayed/upgd ``core/optim/ewc.py``, ``mas.py`` and ``synaptic_intelligence.py``
(``p -= lr * (g + lam * F * (p - w_bar_hat))``); Adam normalises the sum.

Task boundaries are never used (``begin_task``/``end_task`` are the base no-ops), so these
methods run unchanged in streams. State: the anchor (4 B/param, fp32) plus the importance
buffers of each subclass. A parameter without a gradient in a step is left out of that step.
All updates are ``torch._foreach_*`` launches over the parameter list.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import torch
from torch import Tensor

from swgl.bench.methods._checks import check_range
from swgl.bench.methods.base import Method

__all__ = ["StreamAnchor", "ema_"]


class StreamAnchor(Method):
    """Adds ``lam * F * (w - w_bar)`` to every gradient; subclasses define ``F``."""

    hparams = MappingProxyType({"lam": 1.0, "beta_weight": 0.9999, "beta_importance": 0.999})
    #: The strength searched by ``swgl bench --tune`` (with the learning rate).
    tune_grid: ClassVar[Mapping[str, tuple[Any, ...]]] = MappingProxyType({})

    def __init__(self, model, optimizer, ctx, options) -> None:
        super().__init__(model, optimizer, ctx, options)
        self.lam = check_range("lam", self.lam, 0.0)
        self.beta_weight = check_range("beta_weight", self.beta_weight, 0.0, 1.0,
                                       high_open=True)
        self.beta_importance = check_range("beta_importance", self.beta_importance, 0.0, 1.0,
                                           high_open=True)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.anchor = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    def importance(self, idx: list[int], params: list[Tensor],
                   grads: list[Tensor]) -> tuple[list[Tensor], float]:
        """Update the importance state of ``params[idx]``; return ``(F, c_t)``."""
        raise NotImplementedError

    @torch.no_grad()
    def before_step(self) -> None:
        idx = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not idx:
            return
        self.t += 1
        params = [self.params[i] for i in idx]
        grads = [p.grad for p in params]
        anchor = [self.anchor[i] for i in idx]
        fisher, scale = self.importance(idx, params, grads)
        ema_(anchor, params, self.beta_weight)
        pull = torch._foreach_div(anchor, -(1.0 - self.beta_weight ** self.t))
        torch._foreach_add_(pull, params)                      # w - w_bar_hat
        torch._foreach_mul_(pull, fisher)
        torch._foreach_add_(grads, pull, alpha=self.lam * scale)

    def state_tensors(self):
        return list(self.anchor)


def ema_(buffers: list[Tensor], values: list[Tensor], beta: float) -> None:
    """``buffers = beta * buffers + (1 - beta) * values``, in one launch."""
    torch._foreach_lerp_(buffers, values, 1.0 - beta)
