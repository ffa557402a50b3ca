"""Layer awareness (seed 001, flaw #10): one SWGL setting for every tensor vs per category.

A small pre-norm transformer classifies Fashion-MNIST images read as 28 row tokens (a
Linear patch embedding, an ``nn.Embedding`` of positions, one encoder block with LayerNorms,
a final LayerNorm and a Linear head), so it has all four categories of :mod:`swgl.groups`.
It trains on the harness's Permuted Fashion-MNIST (:func:`swgl.bench.scenarios.build_scenario`,
``--tasks`` tasks of ``--steps`` batches), and the harness's metrics
(:mod:`swgl.bench.metrics`) score the accuracy matrix. Methods, for each base optimizer:

* ``<base>``: the base optimizer alone;
* ``<base>+swgl``: ``SWGLWrapper`` with :data:`SWGL_OPTIONS` on every tensor (one size fits
  all);
* ``<base>+swgl-aware``: the same, but biases, norms and embeddings unmodulated
  (``max_boost=1, max_damping=1`` through :func:`swgl.groups.param_groups`);
* ``<base>+swgl-weights-only``: the same as ``-aware`` with embeddings modulated too (only
  biases and norms are exempt).

Usage: ``python benchmarks/layer_groups.py [--seeds 0 1 2] [--tasks 3] [--steps 300]``; prints
a table (mean ± sd over seeds) and writes ``benchmarks/results/layer_groups.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from swgl import SWGLWrapper
from swgl.bench.data import load_dataset
from swgl.bench.metrics import matrix_metrics
from swgl.bench.scenarios import ScenarioOptions, build_scenario
from swgl.groups import param_groups

UNMODULATED = dict(max_boost=1.0, max_damping=1.0)
#: SWGL's options for every variant, pinned (the library's defaults of 2026-11-22 11:00)
SWGL_OPTIONS = dict(rule="v3", signal="utility", mode="update")

BASES = {
    "sgd": (torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    "adamw": (torch.optim.AdamW, {"lr": 1e-3}),
}

#: method suffix -> param_groups(...) keyword arguments (None: no SWGL)
VARIANTS = {
    "": None,
    "+swgl": {},
    "+swgl-aware": dict(biases=UNMODULATED, norms=UNMODULATED, embeddings=UNMODULATED),
    "+swgl-weights-only": dict(biases=UNMODULATED, norms=UNMODULATED),
}


class RowTransformer(nn.Module):
    """Rows of an image as tokens; one pre-norm encoder block; mean pooling."""

    def __init__(self, rows: int = 28, cols: int = 28, dim: int = 32, n_out: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(cols, dim)
        self.pos = nn.Embedding(rows, dim)
        self.block = nn.TransformerEncoderLayer(dim, nhead=4, dim_feedforward=2 * dim,
                                                dropout=0.0, batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_out)

    def forward(self, x):
        tokens = x.reshape(x.shape[0], 28, 28)
        h = self.embed(tokens) + self.pos.weight
        return self.head(self.norm(self.block(h)).mean(1))


def build(method: str, model: nn.Module) -> torch.optim.Optimizer:
    base_name, _, variant = method.partition("+")
    cls, kwargs = BASES[base_name]
    options = VARIANTS["+" + variant if variant else ""]
    if options is None:
        return cls(model.parameters(), **kwargs)
    return SWGLWrapper(param_groups(model, **options, for_wrapper=True), base=cls,
                       base_kwargs=kwargs, **SWGL_OPTIONS)


@torch.no_grad()
def _accuracy(model, x, y) -> float:
    out = model(x)
    return float((out.argmax(1) == y).float().mean()) if torch.isfinite(out).all() else 0.0


def run(method: str, scenario, *, seed: int, steps: int, batch: int = 64) -> dict:
    torch.manual_seed(seed)
    model = RowTransformer()
    opt = build(method, model)
    n_tasks = len(scenario.tasks)
    R = np.zeros((n_tasks, n_tasks))
    gen = torch.Generator().manual_seed(seed)
    base_acc = [_accuracy(model, *scenario.eval_set(t)) for t in range(n_tasks)]
    for t, task in enumerate(scenario.tasks):
        for _ in range(steps):
            idx = task.train_idx[torch.randint(0, len(task.train_idx), (batch,), generator=gen)]
            x, y = scenario.train_batch(t, idx)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        R[t] = [_accuracy(model, *scenario.eval_set(j)) for j in range(n_tasks)]
    return {"R": R.tolist(), **matrix_metrics(R, np.array(base_acc))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--steps", type=int, default=300, help="batches per task")
    ap.add_argument("--bases", nargs="*", default=list(BASES))
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/layer_groups.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("fashion-mnist")
    opts = ScenarioOptions(train_per_task=args.steps * 64, test_per_task=1000)
    methods = [b + v for b in args.bases for v in args.variants]
    results: dict[str, list[dict]] = {m: [] for m in methods}
    t0 = time.time()
    for seed in args.seeds:
        scenario = build_scenario("permuted", data, args.tasks, np.random.default_rng(seed), opts)
        for m in methods:
            results[m].append(run(m, scenario, seed=seed, steps=args.steps))
    keys = ("acc", "forgetting", "learning_acc", "bwt")
    print(f"{'method':28}" + "".join(f"{k:>22}" for k in keys))
    summary = {}
    for m, runs in results.items():
        row = {}
        for k in keys:
            vals = [100 * r[k] for r in runs]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            row[k] = (statistics.mean(vals), sd)
        summary[m] = row
        print(f"{m:28}" + "".join(f"{row[k][0]:14.2f} ± {row[k][1]:5.2f}" for k in keys))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    meta["swgl_options"] = SWGL_OPTIONS
    args.out.write_text(json.dumps({"args": meta, "summary": summary, "runs": results,
                                    "seconds": time.time() - t0}))
    print(f"wrote {args.out} ({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
