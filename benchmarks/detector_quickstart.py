"""Why the default's shift detector finds nothing in the quick-start test's AdamW run, and what
a per-tensor signal would see (issue 12, nineteenth session).

``tests/test_quickstart_forgetting.py`` trains the README's quick start on 10 permuted
Fashion-MNIST tasks (2000 samples, 2 epochs, batch 32, MLP 784-100-100-10); with AdamW at lr
1e-3 v6's detector finds no shift there (a strict xfail). This replays the plain optimizer's
run and tracks, at every step, the detector's fast/slow ratio ``f_hat / q_hat`` (its EMAs,
``swgl.rules.consolidation``'s constants) for the group's signal (the sum of ``g^2`` over every
element: what v6 thresholds at 2) and for each tensor's own sum; it prints the largest ratio
in the first 10 steps of each new task and inside each task (its steps 60 and more).

    python benchmarks/detector_quickstart.py adamw 1e-3 [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from swgl.bench.data import load_dataset
from swgl.rules.consolidation import B_FAST, B_SLOW

TASKS, TRAIN, EPOCHS, BATCH, HIDDEN = 10, 2000, 2, 32, 100
EARLY, SETTLED = 10, 60


def _tasks():
    """The quick-start test's tasks, drawn as it draws them."""
    data = load_dataset("fashion-mnist")
    gen = torch.Generator().manual_seed(0)
    tasks = []
    for t in range(TASKS):
        perm = torch.arange(784) if t == 0 else torch.randperm(784, generator=gen)
        idx = torch.randperm(len(data.y_train), generator=gen)[:TRAIN]
        torch.randperm(len(data.y_test), generator=gen)   # the test's draw of its test split
        tasks.append((data.x_train[idx].flatten(1)[:, perm], data.y_train[idx]))
    return tasks


def ratios(optimizer: str, lr: float) -> list[tuple[int, float, float]]:
    """Per step: (step within its task, the group's ratio, the largest per-tensor ratio)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN),
                          nn.ReLU(), nn.Linear(HIDDEN, 10))
    opt = (torch.optim.SGD(model.parameters(), lr=lr) if optimizer == "sgd"
           else torch.optim.AdamW(model.parameters(), lr=lr))
    order = torch.Generator().manual_seed(0)
    ema: dict[int, list[float]] = {}
    rows, step = [], 0
    for x, y in _tasks():
        for _ in range(EPOCHS):
            perm = torch.randperm(TRAIN, generator=order)
            for i in range(0, TRAIN, BATCH):
                b = perm[i:i + BATCH]
                opt.zero_grad()
                F.cross_entropy(model(x[b]), y[b]).backward()
                sums = [float(p.grad.square().sum()) for p in model.parameters()]
                step += 1
                found = []
                for k, n in enumerate([sum(sums), *sums]):
                    f, q = ema.get(k, (0.0, 0.0))
                    f, q = f + (1 - B_FAST) * (n - f), q + (1 - B_SLOW) * (n - q)
                    ema[k] = [f, q]
                    found.append((f / (1 - B_FAST ** step)) / (q / (1 - B_SLOW ** step)))
                rows.append((step, found[0], max(found[1:])))
                opt.step()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("optimizer", choices=["sgd", "adamw"])
    parser.add_argument("lr", type=float)
    parser.add_argument("--json")
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
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"optimizer": args.optimizer, "lr": args.lr, **out}, f, indent=1)


if __name__ == "__main__":
    main()
