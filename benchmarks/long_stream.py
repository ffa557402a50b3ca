"""A long label-permuted stream (issue 12): does v6's ever-growing importance freeze the
network? Plain SGD / AdamW against the default SWGL, each at the same lrs, over a stream of
many segments with no boundaries given.

v6 adds a term of mean 1 to its importance ``F`` at every shift it detects and never decays
it, so the pull ``k = consolidation * F`` grows with the stream. This runs UPGD's
label-permuted protocol for far longer than the bench's preset (200 segments of 100 steps,
batch 16, against 20 of 312): a new permutation of the ten labels at each segment, a random
Fashion-MNIST training sample per step, online accuracy (the step's batch, before its update)
as the metric. The lr of each method is the one with the best mean online accuracy over the
whole stream (the online protocol's own metric; both get the same lrs and seeds).

    FMNIST_DIR=.research/data python benchmarks/long_stream.py --jobs 16 --json out.json
    python benchmarks/long_stream.py --segments 20 --steps 50 --seeds 0 --jobs 2   # a smoke run
    python benchmarks/long_stream.py --report benchmarks/results/long_stream/results_*.json.gz

Prints, per optimizer and method, the online accuracy by fifth of the stream at the chosen lr
(mean over seeds), the delta against plain paired by seed, and v6's mean ``F`` at the end.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import earn_its_place as eip  # noqa: E402

from swgl import SWGL  # noqa: E402

LRS = {"sgd": (0.035, 0.069, 0.14), "adamw": (4e-4, 8e-4, 1.6e-3)}
BATCH = 16


def run_one(cfg: dict) -> dict:
    """One stream: online accuracy per segment (and, for v6, the mean ``F`` per segment)."""
    torch.set_num_threads(1)
    xtr, ytr, _, _ = eip.data()
    xtr, ytr = xtr[:50000], ytr[:50000]
    torch.manual_seed(cfg["seed"])
    g = torch.Generator().manual_seed(1000 + cfg["seed"])
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    cls = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[cfg["opt"]]
    base = cls(model.parameters(), lr=cfg["lr"])
    opt = base if cfg["method"] == "plain" else SWGL.wrap(base)
    acc, f_mean = [], []
    t0 = time.time()
    for _ in range(cfg["segments"]):
        perm = torch.randperm(10, generator=g)
        correct = 0
        for _ in range(cfg["steps"]):
            idx = torch.randint(0, len(ytr), (BATCH,), generator=g)
            x, y = xtr[idx], perm[ytr[idx]]
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            F.cross_entropy(logits, y).backward()
            opt.step()
            correct += int((logits.argmax(1) == y).sum())
        acc.append(correct / (cfg["steps"] * BATCH))
        if cfg["method"] != "plain":
            state = [opt.state[p]["consolidated"] for p in model.parameters()]
            f_mean.append(float(sum(s.sum() for s in state) / sum(s.numel() for s in state)))
    return {"cfg": cfg, "acc": acc, "F": f_mean, "secs": round(time.time() - t0, 1),
            "finite": all(bool(torch.isfinite(p).all()) for p in model.parameters())}


def grid(segments: int, steps: int, seeds) -> list[dict]:
    """Every run; v6's (the slower) first, so that a pool cut short keeps whole streams."""
    return [dict(opt=opt, method=method, lr=lr, seed=seed, segments=segments, steps=steps)
            for method in ("v6", "plain") for opt, lrs in LRS.items() for lr in lrs
            for seed in seeds]


def summarise(results: list[dict]) -> str:
    """The table: per optimizer and method, the lr with the best mean online accuracy, its
    accuracy by fifth of the stream, and v6's delta against plain paired by seed."""
    lines = ["| optimizer | method | lr | online acc (whole stream) | by fifth | delta vs plain | "
             "final mean F |", "|---|---|---|---|---|---|---|"]
    for opt in LRS:
        best = {}
        for method in ("plain", "v6"):
            cells = {}
            for r in results:
                c = r["cfg"]
                if c["opt"] == opt and c["method"] == method:
                    cells.setdefault(c["lr"], {})[c["seed"]] = r
            if not cells:
                continue
            lr = max(cells, key=lambda k: np.mean([np.mean(r["acc"]) for r in cells[k].values()]))
            best[method] = cells[lr]
        if len(best) < 2:
            continue
        seeds = sorted(set(best["plain"]) & set(best["v6"]))
        for method in ("plain", "v6"):
            runs = [best[method][s] for s in seeds]
            whole = 100 * np.mean([np.mean(r["acc"]) for r in runs])
            n = len(runs[0]["acc"])
            fifths = [100 * np.mean([np.mean(r["acc"][k * n // 5:(k + 1) * n // 5]) for r in runs])
                      for k in range(5)]
            delta = ""
            if method == "v6":
                d = [100 * (np.mean(best["v6"][s]["acc"]) - np.mean(best["plain"][s]["acc"]))
                     for s in seeds]
                delta = f"{np.mean(d):+.1f} ± {np.std(d):.1f}"
            f_end = f"{np.mean([r['F'][-1] for r in runs]):.0f}" if runs[0]["F"] else ""
            lines.append(f"| {opt} | {method} | {runs[0]['cfg']['lr']:g} | {whole:.1f} | "
                         + " / ".join(f"{v:.1f}" for v in fifths) + f" | {delta} | {f_end} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--segments", type=int, default=200)
    p.add_argument("--steps", type=int, default=100, help="steps per segment")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=os.cpu_count())
    p.add_argument("--json", type=Path, help="write every run's record here")
    p.add_argument("--report", type=Path, nargs="+",
                   help="print the table of stored records (.json or .json.gz) and exit")
    args = p.parse_args(argv)
    if args.report:
        print(summarise([r for path in args.report for r in eip.read_results(path)]))  # noqa: T201
        return
    for name in ("segments", "steps", "jobs"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    runs = grid(args.segments, args.steps, args.seeds)
    eip.data()   # loaded once, before the pool forks
    t0 = time.time()
    results = []
    with mp.get_context("fork").Pool(args.jobs) as pool:
        for i, r in enumerate(pool.imap_unordered(run_one, runs), 1):
            results.append(r)
            c = r["cfg"]
            print(f"[{i}/{len(runs)} {time.time() - t0:.0f}s] {c['opt']} {c['method']} "  # noqa: T201
                  f"lr={c['lr']:g} seed={c['seed']}: online {100 * np.mean(r['acc']):.1f}",
                  flush=True)
            if args.json:
                args.json.write_text(json.dumps(results))
    print(summarise(results))  # noqa: T201 (a script's output)


if __name__ == "__main__":
    main()
