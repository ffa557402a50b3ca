"""Why the default's shift detector finds nothing in the quick-start test's AdamW run, and what
a per-tensor signal would see (issue 12, nineteenth session).

``tests/test_quickstart_forgetting.py`` trains the README's quick start on 10 permuted
Fashion-MNIST tasks (2000 samples, 2 epochs, batch 32, MLP 784-100-100-10); with AdamW at lr
1e-3 v6's detector finds no shift there (a strict xfail). This replays the plain optimizer's
run and tracks, at every step, the detector's fast/slow ratio ``f_hat / q_hat`` (its EMAs,
``swgl.rules.consolidation``'s constants) for the group's signal (the sum of ``g^2`` over every
element: what v6 thresholds at 2) and for each tensor's own sum; it prints the largest ratio
in the first 10 steps of each new task and inside each task (its steps 60 and more).

    python benchmarks/detector_quickstart.py adamw 1e-3 [--forgetting] [--json out.json]

``--forgetting`` also trains the test's runs (plain, the default v6, and v6 with the detector on
the largest per-tensor ratio, ``earn_its_place.py``'s ``tensor_detector`` patch) and prints
their forgetting and learning accuracy as the test takes them.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from swgl import SWGL
from swgl.bench.data import load_dataset
from swgl.rules.consolidation import B_FAST, B_SLOW

TASKS, TRAIN, TEST, EPOCHS, BATCH, HIDDEN = 10, 2000, 1000, 2, 32, 100
EARLY, SETTLED = 10, 60


def quickstart_tasks():
    """The quick-start test's tasks, drawn as it draws them: (x, y, x_test, y_test)."""
    data = load_dataset("fashion-mnist")
    gen = torch.Generator().manual_seed(0)
    tasks = []
    for t in range(TASKS):
        perm = torch.arange(784) if t == 0 else torch.randperm(784, generator=gen)
        idx = torch.randperm(len(data.y_train), generator=gen)[:TRAIN]
        test = torch.randperm(len(data.y_test), generator=gen)[:TEST]
        tasks.append((data.x_train[idx].flatten(1)[:, perm], data.y_train[idx],
                      data.x_test[test].flatten(1)[:, perm], data.y_test[test]))
    return tasks


def quickstart_run(optimizer: str, lr: float, swgl: bool, on_step=None) -> tuple[float, float]:
    """The quick-start test's run (``swgl``: ``SWGL(model.parameters())`` with every default
    stepped before the base, as the README's quick start does); ``on_step(model)`` sees each
    step's grads before the steps. Returns the test's forgetting and learning accuracy."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN),
                          nn.ReLU(), nn.Linear(HIDDEN, 10))
    opt = (torch.optim.SGD(model.parameters(), lr=lr) if optimizer == "sgd"
           else torch.optim.AdamW(model.parameters(), lr=lr))
    modulator = SWGL(model.parameters()) if swgl else None
    order = torch.Generator().manual_seed(0)
    tasks = quickstart_tasks()
    R = np.zeros((TASKS, TASKS))
    for t, (x, y, _, _) in enumerate(tasks):
        for _ in range(EPOCHS):
            perm = torch.randperm(TRAIN, generator=order)
            for i in range(0, TRAIN, BATCH):
                b = perm[i:i + BATCH]
                opt.zero_grad()
                F.cross_entropy(model(x[b]), y[b]).backward()
                if on_step is not None:
                    on_step(model)
                if modulator is not None:
                    modulator.step()
                opt.step()
        with torch.no_grad():
            R[t] = [float((model(xt).argmax(1) == yt).float().mean()) for _, _, xt, yt in tasks]
    return (float(np.mean([R[:TASKS - 1, j].max() - R[-1, j] for j in range(TASKS - 1)])),
            float(np.diag(R).mean()))


def ratios(optimizer: str, lr: float) -> list[tuple[int, float, float]]:
    """Per step of the plain run: (step, the group's ratio, the largest per-tensor ratio)."""
    ema: dict[int, list[float]] = {}
    rows: list[tuple[int, float, float]] = []

    def on_step(model: nn.Module) -> None:
        sums = [float(p.grad.square().sum()) for p in model.parameters()]
        step = len(rows) + 1
        found = []
        for k, n in enumerate([sum(sums), *sums]):
            f, q = ema.get(k, (0.0, 0.0))
            f, q = f + (1 - B_FAST) * (n - f), q + (1 - B_SLOW) * (n - q)
            ema[k] = [f, q]
            found.append((f / (1 - B_FAST ** step)) / (q / (1 - B_SLOW ** step)))
        rows.append((step, found[0], max(found[1:])))

    quickstart_run(optimizer, lr, False, on_step)
    return rows


def forgetting(optimizer: str, lr: float) -> dict[str, tuple[float, float]]:
    """The test's forgetting and learning accuracy: plain, the default (v6), and v6 with the
    per-tensor detector (``earn_its_place.py``'s ``tensor_detector`` patch)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import earn_its_place as eip

    out = {"plain": quickstart_run(optimizer, lr, False), "v6": quickstart_run(optimizer, lr, True)}
    with eip._variant({"tensor_detector": True}):
        out["v6, per-tensor detector"] = quickstart_run(optimizer, lr, True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("optimizer", choices=["sgd", "adamw"])
    parser.add_argument("lr", type=float)
    parser.add_argument("--json")
    parser.add_argument("--forgetting", action="store_true",
                        help="also train the test's runs: plain, v6, v6 with a per-tensor detector")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = ratios(args.optimizer, args.lr)
    per_task = EPOCHS * math.ceil(TRAIN / BATCH)
    out = {}
    for col, name in ((1, "group"), (2, "largest per tensor")):
        early = [max(r[col] for r in rows if (r[0] - 1) // per_task == t
                     and (r[0] - 1) % per_task < EARLY) for t in range(1, TASKS)]
        inside = [max(r[col] for r in rows if (r[0] - 1) // per_task == t
                      and (r[0] - 1) % per_task >= SETTLED) for t in range(TASKS)]
        out[name] = {"new_task": early, "inside": inside}
        print(f"{args.optimizer} lr {args.lr:g}, {name}: first {EARLY} steps of tasks 1-9 "
              f"{[round(v, 2) for v in early]}; inside tasks, at most {max(inside):.2f}")
    if args.forgetting:
        out["forgetting, learning accuracy"] = runs = forgetting(args.optimizer, args.lr)
        for name, (fgt, la) in runs.items():
            print(f"{args.optimizer} lr {args.lr:g}, {name}: forgetting {fgt:.3f}, LA {la:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"optimizer": args.optimizer, "lr": args.lr, **out}, f, indent=1)


if __name__ == "__main__":
    main()
