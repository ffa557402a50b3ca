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
    python benchmarks/long_stream.py --report benchmarks/results/long_stream/results_*.json.gz \
        --plot stream.png   # the table, and online accuracy along the stream as a picture

Prints, per optimizer and method, the online accuracy by fifth of the stream at the chosen lr
(mean over seeds), the delta against plain paired by seed, and v6's mean ``F`` at the end.

``--methods`` adds v6's two controls, to tell why the pull helps on this stream, and a blend
(the default runs plain and v6):

* ``uniform``: each shift adds 1 to every element's ``F`` (SI's importance replaced by its
  mean): the same mean pull, growing as v6's does, without the per-element part;
* ``fixed``: the same, but ``F`` held at 1 after the first shift: a pull of constant strength
  toward the last shift's weights, neither per-element nor growing;
* ``mix``: each shift adds half v6's term and half the uniform one (``earn_its_place``'s
  ``mix`` 0.5);
* ``v7``: the opt-in rule, v6 with each shift's term divided by its segment's length.

    python benchmarks/long_stream.py --methods uniform fixed --jobs 16 --json controls.json
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

#: v6 and its controls (see the module's docstring), and the opt-in rule v7 (eighteenth
#: session); plain is the base optimizer alone
METHODS = ("v6", "uniform", "fixed", "mix", "v7")
#: the uniform part of each control's importance
MIXES = {"uniform": 1.0, "fixed": 1.0, "mix": 0.5}
LRS = {"sgd": (0.035, 0.069, 0.14), "adamw": (4e-4, 8e-4, 1.6e-3)}
#: the default batch (``--batch``)
BATCH = 16


def _control(method: str):
    """v6's importance made uniform during a control's run, restored after it: the harness's
    own variant (:func:`earn_its_place._variant` with its ``mix``: all of the importance for
    ``uniform`` and ``fixed``, half for ``mix``; v6's own for the rest)."""
    return eip._variant({"mix": MIXES[method]} if method in MIXES else {})


def run_one(cfg: dict) -> dict:
    with _control(cfg["method"]):
        return _run_one(cfg)


def _run_one(cfg: dict) -> dict:
    """One stream: online accuracy per segment (and, for v6 and its controls, the mean ``F``
    per segment)."""
    torch.set_num_threads(1)
    xtr, ytr, _, _ = eip.data()
    xtr, ytr = xtr[:50000], ytr[:50000]
    torch.manual_seed(cfg["seed"])
    g = torch.Generator().manual_seed(1000 + cfg["seed"])
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    cls = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}[cfg["opt"]]
    base = cls(model.parameters(), lr=cfg["lr"])
    opt = (base if cfg["method"] == "plain"
           else SWGL.wrap(base, **({"rule": "v7"} if cfg["method"] == "v7" else {})))
    acc, f_mean = [], []
    t0 = time.time()
    for _ in range(cfg["segments"]):
        perm = torch.randperm(10, generator=g)
        correct = 0
        for _ in range(cfg["steps"]):
            idx = torch.randint(0, len(ytr), (cfg.get("batch", BATCH),), generator=g)
            x, y = xtr[idx], perm[ytr[idx]]
            opt.zero_grad(set_to_none=True)
            logits = model(x)
            F.cross_entropy(logits, y).backward()
            opt.step()
            if cfg["method"] == "fixed":   # F held at 1 once a shift has set it
                for p in model.parameters():
                    opt.state[p]["consolidated"].clamp_(max=1.0)
            correct += int((logits.argmax(1) == y).sum())
        acc.append(correct / (cfg["steps"] * cfg.get("batch", BATCH)))
        if cfg["method"] != "plain":
            state = [opt.state[p]["consolidated"] for p in model.parameters()]
            f_mean.append(float(sum(s.sum() for s in state) / sum(s.numel() for s in state)))
    return {"cfg": cfg, "acc": acc, "F": f_mean, "secs": round(time.time() - t0, 1),
            "finite": all(bool(torch.isfinite(p).all()) for p in model.parameters())}


def grid(segments: int, steps: int, seeds, methods=("v6", "plain"), batch: int = BATCH,
         optimizers=tuple(LRS), lrs: dict | None = None) -> list[dict]:
    """Every run, on ``lrs`` (per optimizer; default :data:`LRS`); SWGL's (the slower) first,
    so that a pool cut short keeps whole streams."""
    lrs = lrs or LRS
    return [dict(opt=opt, method=method, lr=lr, seed=seed, segments=segments, steps=steps,
                 batch=batch)
            for method in methods for opt in optimizers for lr in lrs[opt] for seed in seeds]


def _shape(cfg: dict) -> tuple:
    """A stream's shape: segments, steps per segment, batch."""
    return cfg.get("segments"), cfg.get("steps"), cfg.get("batch", BATCH)


def summarise(results: list[dict]) -> str:
    """The table of :func:`summarise_one`, one per stream shape in ``results`` (each headed
    by its shape when there are several): runs of other shapes never share a cell."""
    shapes = sorted({_shape(r["cfg"]) for r in results}, key=str)
    if len(shapes) <= 1:
        return summarise_one(results)
    return "\n\n".join(f"{seg} segments x {steps} steps, batch {batch}:\n"
                        + summarise_one([r for r in results if _shape(r["cfg"]) == shape])
                        for shape in shapes for seg, steps, batch in [shape])


def _best(results: list[dict], opt: str) -> dict[str, dict[int, dict]]:
    """Per method (plain first), its runs by seed at the lr with the best mean online
    accuracy over the stream, for one optimizer."""
    best = {}
    for method in ("plain",) + METHODS:
        cells: dict[float, dict[int, dict]] = {}
        for r in results:
            c = r["cfg"]
            if c["opt"] == opt and c["method"] == method:
                cells.setdefault(c["lr"], {})[c["seed"]] = r
        if cells:
            lr = max(cells, key=lambda k: np.mean([np.mean(r["acc"]) for r in cells[k].values()]))
            best[method] = cells[lr]
    return best


def plot(results: list[dict], path: Path, window: int = 10) -> None:
    """Online accuracy along the stream, one panel per optimizer, one line per method at its
    chosen lr: the mean over seeds, smoothed over ``window`` segments. Runs of one stream
    shape only (:func:`summarise` tells them apart)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len({_shape(r["cfg"]) for r in results}) > 1:
        raise ValueError("plot: the results hold streams of several shapes; plot one at a time")
    panels = {opt: best for opt in LRS if (best := _best(results, opt))}
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, (opt, best) in zip(axes[0], panels.items()):
        for method, cell in best.items():
            acc = 100 * np.mean([r["acc"] for r in cell.values()], axis=0)
            w = min(window, len(acc))
            ax.plot(np.arange(w, len(acc) + 1), np.convolve(acc, np.ones(w) / w, mode="valid"),
                    label=f"{method} (lr {next(iter(cell.values()))['cfg']['lr']:g}, "
                          f"{len(cell)} seeds)")
        ax.set_title(f"{opt}: online accuracy")
        ax.set_xlabel("segment")
        ax.set_ylabel(f"online accuracy % (mean of {min(window, len(acc))} segments)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summarise_one(results: list[dict]) -> str:
    """The table: per optimizer and method, the lr with the best mean online accuracy, its
    accuracy by fifth of the stream, and each SWGL method's delta against plain paired by
    seed (over the seeds both ran)."""
    lines = ["| optimizer | method | lr | online acc (whole stream) | by fifth | delta vs plain | "
             "final mean F |", "|---|---|---|---|---|---|---|"]
    for opt in LRS:
        best = _best(results, opt)
        if "plain" not in best or len(best) < 2:
            continue
        for method, cell in best.items():
            seeds = sorted(set(best["plain"]) & set(cell))
            runs = [cell[s] for s in seeds]
            whole = 100 * np.mean([np.mean(r["acc"]) for r in runs])
            n = len(runs[0]["acc"])
            fifths = [100 * np.mean([np.mean(r["acc"][k * n // 5:(k + 1) * n // 5]) for r in runs])
                      for k in range(5)]
            delta = ""
            if method != "plain":
                d = [100 * (np.mean(cell[s]["acc"]) - np.mean(best["plain"][s]["acc"]))
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
    p.add_argument("--batch", type=int, default=BATCH, help="samples per step")
    p.add_argument("--optimizers", nargs="+", choices=tuple(LRS), default=list(LRS))
    p.add_argument("--lrs", type=float, nargs="+",
                   help="these lrs instead of each optimizer's grid (one optimizer only)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--jobs", type=int, default=os.cpu_count())
    p.add_argument("--methods", nargs="+", choices=("plain",) + METHODS, default=["v6", "plain"],
                   help="what to run (default: v6 and plain; uniform and fixed: v6's controls; "
                        "mix: half v6's importance, half uniform; v7: the opt-in rule)")
    p.add_argument("--json", type=Path, help="write every run's record here")
    p.add_argument("--report", type=Path, nargs="+",
                   help="print the table of stored records (.json or .json.gz) and exit")
    p.add_argument("--plot", type=Path,
                   help="also draw online accuracy along the stream into this PNG")
    args = p.parse_args(argv)
    if args.report:
        results = [r for path in args.report for r in eip.read_results(path)]
        print(summarise(results))  # noqa: T201 (a script's output)
        if args.plot:
            plot(results, args.plot)
        return
    for name in ("segments", "steps", "batch", "jobs"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.lrs and len(args.optimizers) != 1:
        p.error(f"--lrs needs one optimizer in --optimizers, got {args.optimizers}")
    runs = grid(args.segments, args.steps, args.seeds, args.methods, args.batch,
                args.optimizers, {args.optimizers[0]: args.lrs} if args.lrs else None)
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
    if args.plot:
        plot(results, args.plot)


if __name__ == "__main__":
    main()
