"""Named regimes (issue 12): ``swgl bench --preset NAME`` sets these config fields.

Explicit flags win over a preset; ``--dataset digits`` runs the same regime on the embedded
data (sizes larger than digits' pool mean "all of it"). A preset may also move the learning
rate spans ``--tune`` covers (``lr_ranges``; ``--lr-range`` wins): short tasks want larger
rates, long ones smaller (issue 12: Adam's best was 1e-4 in one pass, 1e-5 in the literature
protocol). Sizes follow the runs they reproduce:

* ``quick`` (the default): the embedded digits data, split-class and permuted, dataset
  default sizes (a few hundred steps per task, so the lr spans sit higher);
* ``short``: the issue's independent harness, Permuted Fashion-MNIST, 10 tasks x 30k samples,
  one pass, MLP 784-256-256-10, batch 64;
* ``long``: several epochs per task, where forgetting dominates;
* ``literature``: van de Ven et al.'s Permuted MNIST protocol on Fashion-MNIST: 10 tasks,
  MLP 2x1000, 5000 iterations per task, batch 128 (shared/notes/anchors.md section 4);
* ``rotated`` and ``split-domain``: one pass, batch 64;
* ``stream-input`` / ``stream-label``: UPGD-style streams with no boundaries (a new input
  permutation every 5000 samples, a new label permutation every 2500), small batches,
  online accuracy as the headline metric;
* ``single-task``: one task, for the do-no-harm check against the plain optimizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = ["DEFAULT", "PRESETS", "Preset"]


@dataclass(frozen=True)
class Preset:
    description: str
    fields: Mapping[str, Any]
    lr_ranges: Mapping[str, tuple[float, float]]


def _p(description: str, lr_ranges: Mapping[str, tuple[float, float]] | None = None,
       **fields: Any) -> Preset:
    return Preset(description, MappingProxyType(fields), MappingProxyType(dict(lr_ranges or {})))


def _spans(sgd: tuple[float, float], adam: tuple[float, float]) -> dict[str, tuple[float, float]]:
    """The same span for every SGD-family and every Adam-family optimizer."""
    momentum = (sgd[0] / 10, sgd[1] / 10)   # momentum 0.9: a 10x larger effective step
    return {"sgd": sgd, "upgd": sgd, "sgd-momentum": momentum, "adam": adam, "adamw": adam}



_FMNIST = dict(dataset="fashion-mnist", hidden=256, test_per_task=1000)

#: Default name when no --preset is given.
DEFAULT = "quick"

PRESETS: Mapping[str, Preset] = MappingProxyType({
    "quick": _p("digits, split-class + permuted, dataset default sizes (under 3 min on 2 cores)",
                lr_ranges=_spans((3e-3, 3.0), (1e-4, 0.1)), dataset="digits"),
    "short": _p("permuted, 10 tasks x 30k samples, one pass, batch 64",
                scenarios=("permuted",), n_tasks=10, train_per_task=30000, epochs=1,
                batch_size=64, evals_per_task=2, **_FMNIST),
    "long": _p("permuted, 10 tasks x 10k samples, 5 epochs per task, batch 64",
               lr_ranges=_spans((3e-4, 0.3), (3e-6, 3e-3)), scenarios=("permuted",),
               n_tasks=10, train_per_task=10000, epochs=5, batch_size=64, evals_per_task=2,
               **_FMNIST),
    "literature": _p("permuted, 10 tasks, MLP 2x1000, 5000 iterations per task, batch 128",
                     lr_ranges=_spans((1e-4, 0.1), (1e-6, 1e-3)), scenarios=("permuted",),
                     n_tasks=10, train_per_task=60000, steps_per_task=5000, batch_size=128,
                     evals_per_task=1,
                     **{**_FMNIST, "hidden": 1000}),
    "rotated": _p("rotated, 10 tasks x 10k samples, one pass, batch 64",
                  scenarios=("rotated",), n_tasks=10, train_per_task=10000, epochs=1,
                  batch_size=64, evals_per_task=2, **_FMNIST),
    "split-domain": _p("split domain-IL, 5 tasks (all samples of 2 classes), one pass, batch 64",
                       scenarios=("split-domain",), train_per_task=12000, epochs=1,
                       batch_size=64, evals_per_task=2, **_FMNIST),
    "stream-input": _p("input-permuted stream, 20 segments x 5000 samples, batch 8",
                       scenarios=("stream-input-permuted",), n_tasks=20, stream_steps=625,
                       stream_batch=8, **_FMNIST),
    "stream-label": _p("label-permuted stream, 20 segments x 2500 samples, batch 8",
                       scenarios=("stream-label-permuted",), n_tasks=20, stream_steps=312,
                       stream_batch=8, **_FMNIST),
    "single-task": _p("one task of 10k samples, one pass, batch 64 (do no harm)",
                      scenarios=("permuted",), n_tasks=1, train_per_task=10000, epochs=1,
                      batch_size=64, evals_per_task=2, **_FMNIST),
})
