"""Continual-learning metrics: pure functions of the accuracy matrix.

``R[i, j]`` is the accuracy on task ``j`` after training through task ``i`` (``T x T``).
Definitions follow Lopez-Paz & Ranzato 2017 (ACC, BWT, FWT), Chaudhry et al. 2018
(forgetting) and Riemer et al. 2019 (learning accuracy); see ``docs/bench.md``.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "acc", "bwt", "fwt", "forgetting", "learning_accuracy", "matrix_metrics",
    "average_online_accuracy", "plasticity",
]


def square(M, name: str = "R") -> np.ndarray:
    """``M`` as a float64 array, checked to be a non-empty square matrix (ValueError naming
    ``name`` otherwise); shared by the text metrics."""
    M = np.asarray(M, dtype=np.float64)
    if M.ndim != 2 or M.shape[0] != M.shape[1] or M.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty square matrix, got shape {M.shape}")
    return M


def acc(R) -> float:
    """Mean final accuracy over all tasks: mean_j R[T-1, j]."""
    R = square(R)
    return float(R[-1].mean())


def bwt(R) -> float:
    """Backward transfer: mean over j < T-1 of R[T-1, j] - R[j, j] (0 for one task)."""
    R = square(R)
    T = len(R)
    if T == 1:
        return 0.0
    return float(np.mean([R[-1, j] - R[j, j] for j in range(T - 1)]))


def fwt(R, b) -> float:
    """Forward transfer: mean over j > 0 of R[j-1, j] - b[j], b = accuracy at random init."""
    R = square(R)
    b = np.asarray(b, dtype=np.float64)
    if b.shape != (len(R),):
        raise ValueError(f"b must have shape ({len(R)},), got {b.shape}")
    if len(R) == 1:
        return 0.0
    return float(np.mean([R[j - 1, j] - b[j] for j in range(1, len(R))]))


def forgetting(R) -> float:
    """Mean over j < T-1 of max_{l < T-1} R[l, j] - R[T-1, j] (Chaudhry 2018)."""
    R = square(R)
    T = len(R)
    if T == 1:
        return 0.0
    return float(np.mean([R[j:T - 1, j].max() - R[-1, j] for j in range(T - 1)]))


def learning_accuracy(R) -> float:
    """Mean accuracy on each task right after learning it: mean_j R[j, j]."""
    return float(np.diag(square(R)).mean())


def matrix_metrics(R, b) -> dict[str, float]:
    return {
        "acc": acc(R),
        "bwt": bwt(R),
        "fwt": fwt(R, b),
        "forgetting": forgetting(R),
        "learning_acc": learning_accuracy(R),
    }


def average_online_accuracy(correct) -> float:
    """Mean of the per-sample (or per-batch) accuracy measured *before* each update."""
    correct = np.asarray(correct, dtype=np.float64)
    if correct.size == 0:
        raise ValueError("correct must not be empty")
    return float(correct.mean())


def plasticity(loss_before, loss_after, eps: float = 1e-8) -> float:
    """Mean of clip(1 - loss_after / loss_before, 0, 1) over updates.

    How much one update reduces the loss on the batch it was computed from (UPGD's
    plasticity, Elsayed & Mahmood 2024): 1 = the batch is fit at once, 0 = no progress.
    """
    before = np.asarray(loss_before, dtype=np.float64)
    after = np.asarray(loss_after, dtype=np.float64)
    if before.shape != after.shape or before.size == 0:
        raise ValueError(
            f"loss_before and loss_after must be non-empty and of one shape, got "
            f"{before.shape} and {after.shape}"
        )
    return float(np.clip(1.0 - after / np.maximum(before, eps), 0.0, 1.0).mean())
