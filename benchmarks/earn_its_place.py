"""Earn its place (issue 12): SWGL against the plain optimizer at its *tuned* learning rate.

Every method runs over a grid of learning rates and several seeds, on Fashion-MNIST streams
with no task boundaries given to any method; the learning rate of each method is chosen on a
validation split (the last 10k training images, never trained on), and the table reports the
test accuracy at that choice, side by side, from the same run. Methods:

* ``plain``: the base optimizer alone (SGD or Adam);
* ``swgl``: ``SWGL.wrap(base)`` with every default (the library's default rule);
* ``swgl-v3``: the previous default rule (``rule="v3"``);
* ``ctrl-tensor`` / ``ctrl-global``: the controls that isolate the per-parameter idea: the
  default rule with its per-element factor replaced by the tensor's mean factor, or by one
  scalar for the whole model matched to the mean factor at each step.

Scenarios (domain-IL, one shared head): ``short`` (10 permuted tasks x 30k samples, one pass),
``long`` (10 permuted tasks x 10k samples, 5 epochs), ``rotated`` (10 rotations 0-162 deg, 5k
samples, one pass), ``splitdom`` (5 tasks of 2 classes on a 2-way head, one pass).

    python benchmarks/earn_its_place.py grid > grid.json        # the default grid (222 runs)
    python benchmarks/earn_its_place.py run grid.json OUT --jobs 16
    python benchmarks/earn_its_place.py report OUT/results.json --out docs/figures

``run`` writes ``results.json`` (one record per run: config, accuracy matrices on val and test);
``report`` prints the tuned table (markdown), writes it as JSON, and draws the
stability-plasticity frontier (ACC and learning accuracy against the learning rate) per
scenario. The metrics are those of :mod:`swgl.bench.metrics`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import multiprocessing as mp
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from swgl import RULES, SWGL
from swgl.bench.metrics import acc, forgetting, learning_accuracy
from swgl.rules import Context, Hyper
from swgl.rules.importance import factor, progress_ratio

DATA_DIR = os.environ.get("FMNIST_DIR", "/usr/share/datasets/fashion-mnist")
SCENARIOS = {
    "short": dict(tasks=10, n=30000, epochs=1),
    "long": dict(tasks=10, n=10000, epochs=5),
    "rotated": dict(tasks=10, n=5000, epochs=1, scenario="rotated"),
    "splitdom": dict(tasks=5, n=10000, epochs=1, scenario="splitdom"),
}


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(raw[3])]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(dims)


def load(data_dir: str):
    d = Path(data_dir)
    if not (d / "train-images-idx3-ubyte.gz").exists():
        raise FileNotFoundError(f"Fashion-MNIST not found in {d}: apt-get install "
                                "dataset-fashion-mnist, or set FMNIST_DIR")
    x = lambda n: torch.from_numpy(_idx(d / n).reshape(-1, 784).astype(np.float32) / 255.0)  # noqa: E731
    y = lambda n: torch.from_numpy(_idx(d / n).astype(np.int64))  # noqa: E731
    return (x("train-images-idx3-ubyte.gz"), y("train-labels-idx1-ubyte.gz"),
            x("t10k-images-idx3-ubyte.gz"), y("t10k-labels-idx1-ubyte.gz"))


def rotate(x, degrees: float):
    th = math.radians(degrees)
    rot = torch.tensor([[math.cos(th), -math.sin(th), 0.0], [math.sin(th), math.cos(th), 0.0]])
    img = x.view(-1, 1, 28, 28)
    grid = F.affine_grid(rot.expand(len(img), 2, 3), list(img.shape), align_corners=False)
    return F.grid_sample(img, grid, align_corners=False).view(-1, 784)


class Control:
    """The default rule with its per-element factor ``c`` replaced by the tensor's mean
    (``"tensor"``) or by the mean over the whole model (``"global"``), at every step, before
    the rule's progress rescale ``rho`` (so "global" gives back the plain step up to the
    ``max_boost`` cap: the per-element part is all the rule adds)."""

    def __init__(self, params, base, kind: str) -> None:
        self.params, self.base, self.kind = list(params), base, kind
        self.hp = Hyper(alpha=0.999, lambda_reg=3.0, eps=1e-8, max_boost=10.0, mode="update")
        self.s = [torch.zeros_like(p) for p in self.params]
        self.steps = [torch.zeros(()) for _ in self.params]

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        grads = [p.grad for p in self.params]
        k = RULES["v4"].before.foreach(self.params, grads, {"stability": self.s}, self.steps,
                                       self.hp, Context())[0][0]
        c = [factor(s, k, self.hp) for s in self.s]
        if self.kind == "tensor":
            c = [x.mean() for x in c]
        else:
            mean = sum(x.sum() for x in c) / sum(x.numel() for x in c)
            c = [mean] * len(c)
        before = [p.clone() for p in self.params]
        self.base.step()
        u = [p - b for p, b in zip(self.params, before)]
        full = sum((g * uu).sum() for g, uu in zip(grads, u))
        damped = sum((cc * g * uu).sum() for cc, g, uu in zip(c, grads, u))
        rho = progress_ratio(full, damped, self.hp)
        for p, b, cc, uu in zip(self.params, before, c, u):
            p.copy_(b + rho * cc * uu)


def _tasks(cfg, xtr, ytr, g):
    kind, T = cfg.get("scenario", "permuted"), cfg["tasks"]
    if kind == "splitdom":
        keep = ytr < 2 * T
        xtr, ytr = xtr[keep], ytr[keep]

        def task(t, x, y):
            sel = (y == 2 * t) | (y == 2 * t + 1)
            return x[sel], y[sel] - 2 * t
        return task, xtr, ytr, 2
    if kind == "rotated":
        fns = [lambda x, d=180.0 * t / T: rotate(x, d) for t in range(T)]
    else:
        perms = [torch.arange(784)] + [torch.randperm(784, generator=g) for _ in range(T - 1)]
        fns = [lambda x, p=p: x[:, p] for p in perms]
    return (lambda t, x, y: (fns[t](x), y)), xtr, ytr, 10


def run_one(cfg: dict) -> dict:
    torch.set_num_threads(1)
    xtr_all, ytr_all, xte, yte = load(DATA_DIR)
    g = torch.Generator().manual_seed(1000 + cfg["seed"])
    T, N, E, B, H = cfg["tasks"], cfg["n"], cfg["epochs"], cfg["batch"], cfg["hidden"]
    n_eval = cfg.get("n_eval", 2000)
    evals = {"val": (xtr_all[50000:50000 + n_eval], ytr_all[50000:50000 + n_eval]),
             "test": (xte[:n_eval], yte[:n_eval])}
    task, xtr, ytr, n_out = _tasks(cfg, xtr_all[:50000], ytr_all[:50000], g)
    sets = {k: [task(t, *xy) for t in range(T)] for k, xy in evals.items()}
    torch.manual_seed(cfg["seed"])
    model = nn.Sequential(nn.Linear(784, H), nn.ReLU(), nn.Linear(H, H), nn.ReLU(),
                          nn.Linear(H, n_out))
    params = list(model.parameters())
    base_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[cfg["opt"]]
    base = base_cls(params, lr=cfg["lr"])
    method = cfg["method"]
    if method == "plain":
        opt = base
    elif method.startswith("ctrl-"):
        opt = Control(params, base, method[5:])
    else:
        opt = SWGL.wrap(base, **cfg.get("swgl", {}))
    R = {k: np.zeros((T, T)) for k in sets}
    for t in range(T):
        if cfg.get("scenario") == "splitdom":
            x_t, y_t = task(t, xtr, ytr)
            x_t, y_t = x_t[:N], y_t[:N]
        else:
            pool = torch.randperm(len(xtr), generator=g)[:N]
            x_t, y_t = task(t, xtr[pool], ytr[pool])
        for _ in range(E):
            order = torch.randperm(len(y_t), generator=g)
            for i in range(0, len(y_t) - B + 1, B):
                idx = order[i:i + B]
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x_t[idx]), y_t[idx]).backward()
                opt.step()
        with torch.no_grad():
            for k, task_sets in sets.items():
                for j, (xj, yj) in enumerate(task_sets):
                    R[k][t, j] = float((model(xj).argmax(1) == yj).float().mean())
    finite = all(bool(torch.isfinite(p).all()) for p in params)
    return {"cfg": cfg, "finite": finite, **{k: m.tolist() for k, m in R.items()}}


def default_grid() -> list[dict]:
    """Plain and the default SWGL on one lr grid per optimizer, 3 seeds; the controls and the
    previous default (v3) at one lr each; ``long`` (the slowest) only near the tuned lrs of
    the rule search (benchmarks/rule_search.py): 222 runs, about 5 minutes on 14 cores."""
    lrs = {"sgd": (0.01, 0.015, 0.02, 0.03), "adam": (3e-5, 6e-5, 1e-4, 2e-4)}
    long_lrs = {"sgd": (0.015, 0.02), "adam": (3e-5, 6e-5)}
    probe = {"sgd": 0.02, "adam": 6e-5}
    runs = []
    for name, sc in SCENARIOS.items():
        for opt, grid in lrs.items():
            for seed in (0, 1, 2):
                base = dict(seed=seed, batch=64, hidden=256, opt=opt, scenario_name=name, **sc)
                if name == "long":
                    runs += [dict(base, lr=lr, method=m) for lr in long_lrs[opt]
                             for m in ("plain", "swgl")]
                    continue
                runs += [dict(base, lr=lr, method=m) for lr in grid for m in ("plain", "swgl")]
                runs += [dict(base, lr=probe[opt], method=m)
                         for m in ("ctrl-tensor", "ctrl-global")]
                runs.append(dict(base, lr=probe[opt] * 5, method="swgl-v3", swgl={"rule": "v3"}))
    # the fast scenarios first: a run cut short by a time limit keeps whole scenarios
    order = {"splitdom": 0, "rotated": 1, "short": 2, "long": 3}
    return sorted(runs, key=lambda r: order[r["scenario_name"]])


def run(grid: list[dict], out: Path, jobs: int) -> None:
    from tqdm import tqdm

    out.mkdir(parents=True, exist_ok=True)
    results = []
    ctx = mp.get_context("fork")
    with ctx.Pool(jobs) as pool:
        for res in tqdm(pool.imap_unordered(run_one, grid), total=len(grid), mininterval=10):
            results.append(res)
            if len(results) % 10 == 0:  # partial results survive a time limit
                (out / "results.json").write_text(json.dumps(results))
    (out / "results.json").write_text(json.dumps(results))


def _metrics(R) -> tuple[float, float, float]:
    R = np.asarray(R)
    return (100 * acc(R), 100 * learning_accuracy(R), 100 * forgetting(R))


def summarise(results: list[dict]):
    """Per (scenario, optimizer, method, lr): mean over seeds of val ACC and test ACC/LA/F."""
    cells = defaultdict(list)
    for r in results:
        c = r["cfg"]
        cells[(c["scenario_name"], c["opt"], c["method"], c["lr"])].append(r)
    table = {}
    for key, rs in cells.items():
        val = [_metrics(r["val"])[0] if r["finite"] else float("nan") for r in rs]
        test = np.array([_metrics(r["test"]) if r["finite"] else (np.nan,) * 3 for r in rs])
        table[key] = dict(val_acc=float(np.mean(val)), acc=test[:, 0].tolist(),
                          la=float(test[:, 1].mean()), forg=float(test[:, 2].mean()),
                          seeds=[r["cfg"]["seed"] for r in rs])
    return table


def tuned(table):
    """Each method's lr chosen by mean validation ACC, per scenario and optimizer."""
    best = {}
    for (sc, opt, method, lr), row in table.items():
        key = (sc, opt, method)
        if key not in best or row["val_acc"] > best[key][1]["val_acc"]:
            best[key] = (lr, row)
    return best


def report(results: list[dict], out: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    table, lines, records = summarise(results), [], []
    best = tuned(table)
    lines.append("| scenario | optimizer | method | tuned lr | ACC (test) | delta vs tuned plain "
                 "| LA | forgetting | seeds |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for (sc, opt, method), (lr, row) in sorted(best.items()):
        plain = best.get((sc, opt, "plain"))
        acc = np.array(row["acc"])
        delta = ""
        if plain is not None and method != "plain":
            d = acc.mean() - np.mean(plain[1]["acc"])
            delta = f"{d:+.1f}"
        lines.append(f"| {sc} | {opt} | {method} | {lr:g} | {acc.mean():.1f} ± {acc.std():.1f} "
                     f"| {delta} | {row['la']:.1f} | {row['forg']:.1f} | {len(acc)} |")
        records.append(dict(scenario=sc, optimizer=opt, method=method, lr=lr,
                            acc_mean=float(acc.mean()), acc_std=float(acc.std()), la=row["la"],
                            forgetting=row["forg"], val_acc=row["val_acc"], seeds=row["seeds"]))
    (out / "earn_its_place_tuned.json").write_text(json.dumps(records, indent=1))
    scenarios = sorted({k[0] for k in table})
    fig, axes = plt.subplots(2, len(scenarios), figsize=(4.2 * len(scenarios), 7), squeeze=False)
    for col, sc in enumerate(scenarios):
        for row_i, opt in enumerate(("sgd", "adam")):
            ax = axes[row_i][col]
            for method in sorted({k[2] for k in table if k[0] == sc and k[1] == opt}):
                pts = sorted((k[3], v) for k, v in table.items() if k[:3] == (sc, opt, method))
                lrs = [p[0] for p in pts]
                acc = [np.mean(p[1]["acc"]) for p in pts]
                (h,) = ax.plot(lrs, acc, "o-", label=f"{method} ACC")
                ax.plot(lrs, [p[1]["la"] for p in pts], "x--", color=h.get_color(), alpha=0.6,
                        label=f"{method} LA")
            ax.set_xscale("log")
            ax.set_title(f"{sc} / {opt}")
            ax.set_xlabel("learning rate")
            ax.set_ylabel("test accuracy %")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=6)
    fig.suptitle("Stability-plasticity frontier: ACC (solid) and learning accuracy (dashed)")
    fig.tight_layout()
    fig.savefig(out / "earn_its_place_frontier.png", dpi=110)
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("grid", help="print the default grid as JSON")
    r = sub.add_parser("run", help="run a grid")
    r.add_argument("grid", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--jobs", type=int, default=os.cpu_count())
    rep = sub.add_parser("report", help="tables and frontier plots from results.json files")
    rep.add_argument("results", type=Path, nargs="+")
    rep.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args(argv)
    if args.cmd == "grid":
        json.dump(default_grid(), sys.stdout)
    elif args.cmd == "run":
        t0 = time.time()
        run(json.loads(args.grid.read_text()), args.out, args.jobs)
        print(f"done in {time.time() - t0:.0f} s")
    else:
        results = [r for p in args.results for r in json.loads(p.read_text())]
        print(report(results, args.out))


if __name__ == "__main__":
    main()
