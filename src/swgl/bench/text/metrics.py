"""Continual language-modelling metrics: pure functions of the loss matrix.

``L[i, j]`` is the validation loss (nats per byte) on domain ``j`` after training through
domain ``i`` (``T x T``; in the boundary-free form, after segment ``i`` of the stream). Lower
is better, so forgetting is a *rise* of loss (the mirror of Chaudhry et al. 2018's drop of
accuracy); see ``docs/bench.md``.
"""

from __future__ import annotations

import numpy as np

from swgl.bench.metrics import square

__all__ = ["final_loss", "forgetting", "learning_loss", "loss_metrics", "relative_gap"]


def _square(L) -> np.ndarray:
    return square(L, "L")


def final_loss(L) -> float:
    """Mean loss over all domains at the end: mean_j L[T-1, j]."""
    return float(_square(L)[-1].mean())


def learning_loss(L) -> float:
    """Mean loss on each domain right after training on it: mean_j L[j, j]."""
    return float(np.diag(_square(L)).mean())


def forgetting(L) -> float:
    """Mean over j < T-1 of L[T-1, j] - min_{j <= l < T-1} L[l, j] (0 for one domain).

    How far each earlier domain's final loss rose above the best it reached once trained.
    """
    L = _square(L)
    T = len(L)
    if T == 1:
        return 0.0
    return float(np.mean([L[-1, j] - L[j:T - 1, j].min() for j in range(T - 1)]))


def loss_metrics(L) -> dict[str, float]:
    return {"final_loss": final_loss(L), "forgetting": forgetting(L),
            "learning_loss": learning_loss(L)}


def relative_gap(value: float, reference: float) -> float:
    """(value - reference) / reference: 0.01 means 1% above the reference."""
    if reference == 0:
        raise ValueError("reference must be non-zero")
    return (value - reference) / reference
