"""The default step's cost on a small model on the CPU (issue 13, sixteenth session).

The ``swgl bench`` target (swgl-sgd at most 1.5x naive-sgd per step) is set by a small model:
the digits MLP (64-100-100-10, batch 32, one thread), where a step's time is the dispatch of
many small ops and Python, not memory traffic. This prints, for ``SWGL.wrap(SGD)`` with every
default against SGD alone:

1. the optimizer step and the whole train step (forward, backward, step), each the min over
   rounds of a block's median (interleaved blocks: steadier on a shared machine);
2. measured without a clock: the aten ops and the Python function calls per SWGL step, with
   the pull active (the state marked consolidated, as after a shift) and before any shift.

Writes JSON with ``--json``. To compare two trees, run it under each tree's ``src``:

    PYTHONPATH=src python benchmarks/cpu_step_small.py --json out.json
"""

from __future__ import annotations

import argparse
import cProfile
import json
import platform
import pstats
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import swgl
from swgl import SWGL


def _setup(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 100), nn.ReLU(),
                          nn.Linear(100, 10))
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, (SWGL.wrap(base) if kind == "swgl" else base)


def _batch() -> tuple:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(32, 64, generator=gen), torch.randint(0, 10, (32,), generator=gen)


def _block(model, opt, x, y, n: int) -> tuple[float, float]:
    """Medians over ``n`` steps, in us: (optimizer step, train step)."""
    step, train = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        step.append(t2 - t1)
        train.append(t2 - t0)
    step.sort()
    train.sort()
    return 1e6 * step[n // 2], 1e6 * train[n // 2]


def timing(rounds: int, steps: int) -> dict[str, dict[str, float]]:
    x, y = _batch()
    runs = {kind: _setup(kind) for kind in ("sgd", "swgl")}
    best = {kind: [float("inf"), float("inf")] for kind in runs}
    for _ in range(rounds):
        for kind, (model, opt) in runs.items():
            for i, value in enumerate(_block(model, opt, x, y, steps)):
                best[kind][i] = min(best[kind][i], value)
    return {kind: {"step_us": v[0], "train_us": v[1]} for kind, v in best.items()}


def counts(consolidated: bool, steps: int = 20) -> dict[str, float]:
    """aten ops and Python calls per SWGL step (no clock)."""
    model, opt = _setup("swgl")
    x, y = _batch()
    for _ in range(5):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    if consolidated:   # as after a shift: the pull runs at every step
        for p in model.parameters():
            opt.state[p]["detector"][3] = 1.0
            opt.state[p]["consolidated"].fill_(1.0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            opt.step()
    ops = sum(e.name.startswith("aten::") for e in prof.events())
    calls = cProfile.Profile()
    calls.enable()
    for _ in range(steps):
        opt.step()
    calls.disable()
    return {"aten_ops": ops / steps, "python_calls": pstats.Stats(calls).total_calls / steps}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=150, help="steps per block")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t = timing(args.rounds, args.steps)
    c = {"pull active": counts(True), "before any shift": counts(False)}
    print("| setup | optimizer step us | train step us | train step x SGD |")
    print("|---|---|---|---|")
    for kind, name in (("sgd", "torch SGD"), ("swgl", "SWGL.wrap(SGD), defaults")):
        print(f"| {name} | {t[kind]['step_us']:.0f} | {t[kind]['train_us']:.0f} | "
              f"{t[kind]['train_us'] / t['sgd']['train_us']:.2f} |")
    print()
    print("| SWGL step | aten ops | Python calls |")
    print("|---|---|---|")
    for name, row in c.items():
        print(f"| {name} | {row['aten_ops']:.0f} | {row['python_calls']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps({
            "timing": t, "counts": c, "swgl": swgl.__version__, "torch": torch.__version__,
            "machine": platform.platform(), "rounds": args.rounds, "steps": args.steps,
        }, indent=1))


if __name__ == "__main__":
    main()
