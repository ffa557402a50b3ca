"""The two text scenarios: which domain each training sequence comes from, step by step.

* ``text-domains``: domain after domain, ``steps_per_domain`` steps each; methods get
  ``begin_task`` / ``end_task`` at every switch.
* ``text-drift``: no boundary. At stream position ``p = step / steps_per_domain`` domain
  ``j`` has weight ``max(0, 1 - |p - (j + 1/2)|)``, normalised: pure domain ``j`` at the
  middle of its segment, a linear cross-fade into ``j + 1`` between the middles (the first
  and last half segments are pure). Each sequence of a batch draws its domain from these
  proportions. Consolidating methods get pseudo-boundaries every ``consolidate_every``
  steps, unaligned with the domains, as in the image streams.

The loss matrix is measured at the end of each segment in both forms.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["SCENARIOS", "domain_weights", "sample_windows", "eval_windows"]

#: scenario name -> whether methods are told the domain boundaries
SCENARIOS: dict[str, bool] = {"text-domains": True, "text-drift": False}


def domain_weights(scenario: str, step: int, steps_per_domain: int, n_domains: int) -> np.ndarray:
    """Mixing proportions of the ``n_domains`` domains at ``step`` (they sum to 1)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {sorted(SCENARIOS)}, got {scenario!r}")
    p = step / steps_per_domain
    if SCENARIOS[scenario]:
        w = np.zeros(n_domains)
        w[min(int(p), n_domains - 1)] = 1.0
        return w
    centres = np.arange(n_domains) + 0.5
    w = np.clip(1.0 - np.abs(np.clip(p, 0.5, n_domains - 0.5) - centres), 0.0, None)
    return w / w.sum()


def sample_windows(data: Tensor, n: int, length: int, gen: torch.Generator) -> Tensor:
    """``n`` random windows of ``length + 1`` bytes of ``data`` (int64, on data's device)."""
    if len(data) <= length + 1:
        raise ValueError(f"a split of {len(data)} bytes is too short for windows of {length + 1}")
    starts = torch.randint(0, len(data) - length - 1, (n,), generator=gen)
    return data[(starts[:, None] + torch.arange(length + 1)).to(data.device)].long()


def eval_windows(data: Tensor, n: int, length: int) -> Tensor:
    """``n`` evenly spaced windows of ``length + 1`` bytes: the fixed evaluation set."""
    if len(data) <= length + 1:
        raise ValueError(f"a split of {len(data)} bytes is too short for windows of {length + 1}")
    starts = torch.linspace(0, len(data) - length - 1, n).long()
    return data[(starts[:, None] + torch.arange(length + 1)).to(data.device)].long()
