"""Earn its place (issue 12): SWGL against the plain optimizer at its *tuned* learning rate.

Every method runs over a grid of learning rates and several seeds, on Fashion-MNIST streams
with no task boundaries given to any method; the learning rate of each method is chosen on a
validation split (the last 10k training images, never trained on), and the table reports the
test accuracy at that choice, side by side, from the same run. Methods:

* ``plain``: the base optimizer alone (SGD or Adam);
* ``swgl``: ``SWGL.wrap(base)`` with every default (the library's default rule: ``v5`` since
  the sixth session, ``v4`` before it, so the ``swgl`` rows of earlier stored results are v4);
* ``swgl-v5``, ``swgl-v4``, ``swgl-v3``: a rule named explicitly (``swgl-v5-c<strength>``:
  v5 with that ``consolidation``);
* ``ctrl-tensor`` / ``ctrl-global``: the controls that isolate the per-parameter idea: v4
  with its per-element factor replaced by the tensor's mean factor, or by one scalar for the
  whole model matched to the mean factor at each step;
* the boundary-free peers (:data:`PEERS`), built from the harness's method classes
  (``swgl.bench.methods``: ``stream-ewc``, ``stream-mas``, ``stream-si``, ``l2-init`` on SGD and
  on Adam; ``upgd``, ``mesu``, ``bgd`` on their own optimizers, in the SGD rows), each tuned on
  the validation split over the lr grid and two values of its strength (:data:`PEER_STRENGTH`);
* ``ewc-boundaries``, ``si-boundaries``: references, not peers: EWC and SI *given* the task
  boundaries (:data:`BOUNDARY_REFS`), the protection a boundary buys.

Scenarios (domain-IL, one shared head): ``short`` (10 permuted tasks x 30k samples, one pass),
``long`` (10 permuted tasks x 10k samples, 5 epochs), ``rotated`` (10 rotations 0-162 deg, 5k
samples, one pass), ``splitdom`` (5 tasks of 2 classes on a 2-way head, one pass);
``short10k`` (``short`` with 10k samples per task) is the device preset's reduced ``short``.

    python benchmarks/earn_its_place.py grid > grid.json        # the default grid (222 runs)
    python benchmarks/earn_its_place.py grid --preset device    # long + the peers (534 runs)
    python benchmarks/earn_its_place.py grid --preset v5-strength  # v5's pull strength (168)
    python benchmarks/earn_its_place.py grid --preset v5-horizon   # the fading pull (300)
    python benchmarks/earn_its_place.py grid --preset ewc-boundaries  # EWC, SI given bounds (378)
    python benchmarks/earn_its_place.py grid --preset v5-strong    # a strong pull, no fade (252)
    python benchmarks/earn_its_place.py grid --preset choice  # plain, v5, v6; peers on long (330)
    python benchmarks/earn_its_place.py grid --preset detector  # v6's detector constants (300)
    python benchmarks/earn_its_place.py grid --preset oracle  # v6 given the true shifts (620)
    python benchmarks/earn_its_place.py grid --preset warmup  # v6's detector's warm-up (620)
    python benchmarks/earn_its_place.py grid --preset anchor  # v6's anchor, weighted (468)
    python benchmarks/earn_its_place.py grid --preset adam-long  # Adam long, 10 seeds (60)
    python benchmarks/earn_its_place.py grid --preset mix  # v6's importance part uniform (144)
    python benchmarks/earn_its_place.py grid --preset fade  # v6's pull stronger, fading (360)
    python benchmarks/earn_its_place.py grid --preset fade-adam-long  # its Adam long seeds (21)
    python benchmarks/earn_its_place.py grid --preset per-step  # v6's pull per segment step (372)
    python benchmarks/earn_its_place.py grid --preset min-segment  # v7's floor (66)
    python benchmarks/earn_its_place.py grid --preset tensor-detector  # per-tensor (228)
    python benchmarks/earn_its_place.py run grid.json OUT --jobs 16
    python benchmarks/earn_its_place.py report OUT/results.json --out docs/figures

``run`` writes ``results.json`` (one record per run: config, accuracy matrices on val and test,
seconds), rewritten after every run, and ``grid.json``; runs start in grid order. ``report``
prints the tuned table (markdown; lr and strength chosen on val), writes it as JSON, and draws
the stability-plasticity frontier (ACC and learning accuracy against the learning rate) per
scenario. The metrics are those of :mod:`swgl.bench.metrics`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gzip
import itertools
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
from swgl.bench.methods import METHODS, OPTIMIZERS, make_method
from swgl.bench.methods import Context as MethodContext
from swgl.bench.metrics import acc, forgetting, learning_accuracy
from swgl.rules import Context, Hyper, consolidation, importance, synaptic
from swgl.rules.importance import factor, progress_ratio

DATA_DIR = os.environ.get("FMNIST_DIR", "/usr/share/datasets/fashion-mnist")
SCENARIOS = {
    "short": dict(tasks=10, n=30000, epochs=1),
    "long": dict(tasks=10, n=10000, epochs=5),
    "rotated": dict(tasks=10, n=5000, epochs=1, scenario="rotated"),
    "splitdom": dict(tasks=5, n=10000, epochs=1, scenario="splitdom"),
    # the device preset's reduced `short` (3x fewer samples per task), for the peers' grid
    "short10k": dict(tasks=10, n=10000, epochs=1),
    # small cases (the must-show test's size: 62 and 186 steps a task), for the oracle preset
    "small": dict(tasks=5, n=4000, epochs=1),
    "small3": dict(tasks=5, n=4000, epochs=3),
}

#: The boundary-free peers (``swgl.bench.methods``; none is given task boundaries), by the
#: family of the row (``opt``) they sit in: the harness spec that runs them there. UPGD, MESU and
#: BGD are their own optimizers: they sit in the SGD rows (their ``OptimizerInfo.baseline`` is
#: plain SGD) and the table says so. L2 Init's spec uses Adam; on SGD it is the same strategy
#: with the SGD optimizer.
PEERS: dict[str, dict[str, str]] = {
    "stream-ewc": {"sgd": "stream-ewc", "adam": "stream-ewc-adam"},
    "stream-mas": {"sgd": "stream-mas", "adam": "stream-mas-adam"},
    "stream-si": {"sgd": "stream-si", "adam": "stream-si-adam"},
    "l2-init": {"sgd": "l2-init", "adam": "l2-init"},
    "upgd": {"sgd": "upgd"},
    "mesu": {"sgd": "mesu"},
    "bgd": {"sgd": "bgd"},
}


#: Reference methods given the task boundaries (``end_task`` after each task), which SWGL and
#: the peers above never get: how far a boundary-free method is from the protection a
#: boundary buys (issue 12's "Why": EWC given the boundaries beat tuned Adam by over 4 points
#: in the literature protocol). The harness spec, run with the row's optimizer.
BOUNDARY_REFS: dict[str, str] = {"ewc-boundaries": "ewc", "si-boundaries": "si"}
#: The penalty strengths per optimizer. EWC's (Adam: its harness tuning grid and two smaller
#: values, since the grid's were all below plain; SGD: from 1, since SGD steps along the
#: penalty's gradient unnormalised and lam 100 at lr 0.01 diverged) and the lrs per scenario
#: (plain's tuned lr and twice and four times it, since a penalty allows a larger one; on
#: ``rotated`` with SGD half, once and twice it)
BOUNDARY_STRENGTH = {"ewc-boundaries": {"sgd": {"lam": (1.0, 10.0, 100.0)},
                                        "adam": {"lam": (1.0, 10.0, 100.0, 1000.0, 10000.0)}},
                     # SI: its harness tuning grid, both optimizers
                     "si-boundaries": {"sgd": {"c": (0.1, 1.0, 10.0)},
                                       "adam": {"c": (0.1, 1.0, 10.0)}}}
BOUNDARY_LRS = {"long": {"sgd": (0.01, 0.02, 0.04), "adam": (6e-5, 1.2e-4, 2.4e-4)},
                "short": {"sgd": (0.02, 0.04, 0.08), "adam": (1e-4, 2e-4, 4e-4)},
                "rotated": {"sgd": (0.12, 0.24, 0.48), "adam": (2e-4, 4e-4, 8e-4)}}


def peer_spec(method: str, opt: str):
    """The harness :class:`MethodSpec` of peer ``method`` in the ``opt`` rows."""
    spec = METHODS[BOUNDARY_REFS[method] if method in BOUNDARY_REFS else PEERS[method][opt]]
    if spec.optimizer in ("sgd", "adam") and spec.optimizer != opt:
        spec = dataclasses.replace(spec, optimizer=opt)      # l2-init on SGD
    return spec


def own_optimizer(method: str) -> str | None:
    """The peer's own optimizer (``"upgd"``, ``"mesu"``, ``"bgd"``), else None."""
    if method not in PEERS:
        return None
    opt = METHODS[next(iter(PEERS[method].values()))].optimizer
    return None if opt in ("sgd", "adam") else opt


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


_DATA: dict[str, tuple] = {}


def data(data_dir: str = DATA_DIR):
    """:func:`load`, once per process (``run`` loads it before forking its pool)."""
    if data_dir not in _DATA:
        _DATA[data_dir] = load(data_dir)
    return _DATA[data_dir]


def rotate(x, degrees: float):
    th = math.radians(degrees)
    rot = torch.tensor([[math.cos(th), -math.sin(th), 0.0], [math.sin(th), math.cos(th), 0.0]])
    img = x.view(-1, 1, 28, 28)
    grid = F.affine_grid(rot.expand(len(img), 2, 3), list(img.shape), align_corners=False)
    return F.grid_sample(img, grid, align_corners=False).view(-1, 784)


class Control:
    """v4 with its per-element factor ``c`` replaced by the tensor's mean
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


#: the detector's own constants, as imported (a config may set others for its run)
DETECTOR = (consolidation.SHIFT_RATIO, consolidation.REFRACTORY, consolidation.WARMUP)
#: the detector's step as imported; a config with ``oracle`` replaces it for its run
ADVANCE = consolidation._advance
#: the oracle's switch, set by the training loop before each step
ORACLE = {"fire": False}


def _oracle_advance(n, dets, found, kernel):
    """The detector's step with its shift replaced by the true boundary (``ORACLE``): the
    detector's own EMAs advance, but it fires exactly when the loop says (CPU only)."""
    last = consolidation.freshest(dets)[3]
    new, _ = ADVANCE(n, dets, found, kernel)
    fire = ORACLE["fire"]
    return torch.stack([new[0], new[1], new[2], new[0] if fire else last]), torch.tensor(fire)


#: the group's g^2 total as imported; a config with ``tensor_detector`` keeps its per-tensor
#: sums for the detector (below)
TOTAL = importance._total
#: per run: the last per-tensor sums of g^2 and each tensor's fast and slow EMAs
PER_TENSOR: dict = {}


def _total_kept(partial_sums, ctx):
    """v4's total of the per-tensor sums of ``g^2``, the sums kept for the detector."""
    PER_TENSOR["sums"] = partial_sums
    return TOTAL(partial_sums, ctx)


def _per_tensor_advance(n, dets, found, kernel):
    """The detector's step with each tensor's own ratio: each tensor's ``g^2`` sum gets the
    detector's fast and slow EMAs, and the group shifts when the largest ratio passes
    ``SHIFT_RATIO`` (warm-up and refractory period as v6's); the group's own EMAs advance as
    v6's (``stats`` reads them). CPU only, unmasked (the harness's grads are finite)."""
    sums = [float(x) for x in PER_TENSOR["sums"]]
    t, f, q, t_last = consolidation.freshest_on_host(dets)
    t += 1.0
    emas = PER_TENSOR.setdefault("emas", [[0.0, 0.0] for _ in sums])
    fast, slow = 1.0 - consolidation.B_FAST, 1.0 - consolidation.B_SLOW
    ratio = 0.0
    for ema, x in zip(emas, sums):
        ema[0] += fast * (x - ema[0])
        ema[1] += slow * (x - ema[1])
        if ema[1] > 0.0:
            ratio = max(ratio, (ema[0] / (1.0 - consolidation.B_FAST ** t))
                        / (ema[1] / (1.0 - consolidation.B_SLOW ** t)))
    n = float(n)
    f, q = f + fast * (n - f), q + slow * (n - q)
    shift = (t > consolidation.WARMUP and t - t_last > consolidation.REFRACTORY
             and ratio > consolidation.SHIFT_RATIO)
    return torch.tensor([t, f, q, t if shift else t_last]), torch.tensor(shift)


#: v6's consolidation as imported; a config with ``anchor: "weighted"`` replaces it for its run
CONSOLIDATE = synaptic._consolidate


def _consolidate_weighted(params, state, shift, variant, ctx, plan=None, **v7) -> None:
    """v6's consolidation with its anchor at the importance-weighted mean of the weights at
    every shift so far, ``mu = (F_old mu_old + Om_n w) / (F_old + Om_n)``: the one quadratic
    equal (up to a constant) to the sum of the per-shift penalties ``Om_n,i (w - w_i)^2``,
    where v6 keeps the last shift's weights alone (CPU only)."""
    if not bool(shift):
        return
    F, mu = state["consolidated"], state["anchor"]
    old_F, old_mu = [f.clone() for f in F], [m.clone() for m in mu]
    CONSOLIDATE(params, state, shift, variant, ctx, plan, **v7)   # F += Om_n, path = 0, mu = w
    for f0, f, m0, m in zip(old_F, F, old_mu, mu):
        m.copy_(torch.where(f > 0, (f0 * m0 + (f - f0) * m) / f.clamp(min=1e-30), m))


def _consolidate_per_step(consolidate):
    """``consolidate`` with each shift's term divided by the steps since the shift before it
    (the segment's length, from the detector before this step advances it): ``F += Om /
    mean(Om) / T``, so that the pull a segment's weights receive over the next segment of the
    same length is about the same for any length (eighteenth session; CPU only; the rule
    ``v7`` since)."""
    def per_step(params, state, shift, variant, ctx, plan=None, **v7) -> None:
        if not bool(shift):
            return
        t, _, _, t_last = consolidation.freshest_on_host(state["detector"])
        F = state["consolidated"]
        old = [f.clone() for f in F]
        consolidate(params, state, shift, variant, ctx, plan, **v7)
        inv = 1.0 / (t + 1.0 - t_last)
        for f0, f in zip(old, F):
            f.sub_(f0).mul_(inv).add_(f0)
    return per_step


#: v6's importance as imported; a config with ``mix`` replaces it for its run
IMPORTANCE = synaptic._importance
#: v7's shortest segment as imported; a config with ``min_segment`` replaces it for its run
MIN_SEGMENT = synaptic.MIN_SEGMENT


def _mixed_importance(mix: float):
    """v6's importance blended with a uniform term, ``(1 - mix) Om / mean(Om) + mix`` (mean
    1, as v6's term; ``mix`` 1 is the uniform control of the long stream, fifteenth session),
    its mean taken over the tensors given (the group's on the CPU)."""
    def importance(w, mu, path, variant):
        om = IMPORTANCE(w, mu, path, variant)
        mean = sum(o.sum() for o in om) / sum(o.numel() for o in om)
        scale = (1.0 - mix) / mean.clamp(min=1e-30)
        return [o * scale + mix for o in om]
    return importance


@contextlib.contextmanager
def _variant(cfg: dict):
    """The rule's module constants and functions as ``cfg`` asks for them during its run, the
    ones before it restored after (a worker or a test runs many configs in one process):
    the detector's constants (``detector``; a config of two, the thirteenth session's, had its
    warm-up equal to its refractory period: the detector's first condition was
    ``t > REFRACTORY`` then), the oracle (``oracle``), the anchor (``anchor``), the
    importance's uniform part (``mix``), its division by the segment's length (``per_step``),
    v7's floor on that length (``min_segment``) and a detector on each tensor's own ratio
    (``tensor_detector``, nineteenth session)."""
    names = ((consolidation, "SHIFT_RATIO"), (consolidation, "REFRACTORY"),
             (consolidation, "WARMUP"), (consolidation, "_advance"), (synaptic, "_consolidate"),
             (synaptic, "_importance"), (synaptic, "MIN_SEGMENT"), (importance, "_total"))
    before = [getattr(module, name) for module, name in names]
    ratio, refractory, *warmup = cfg.get("detector", DETECTOR)
    PER_TENSOR.clear()
    values = (ratio, refractory, warmup[0] if warmup else refractory,
              _per_tensor_advance if cfg.get("tensor_detector") else
              ADVANCE if cfg.get("oracle") is None else _oracle_advance,
              (_consolidate_per_step if cfg.get("per_step") else lambda c: c)(
                  {None: CONSOLIDATE, "weighted": _consolidate_weighted}[cfg.get("anchor")]),
              IMPORTANCE if cfg.get("mix") is None else _mixed_importance(cfg["mix"]),
              float(cfg.get("min_segment", MIN_SEGMENT)),
              _total_kept if cfg.get("tensor_detector") else TOTAL)
    try:
        for (module, name), value in zip(names, values):
            setattr(module, name, value)
        yield
    finally:
        for (module, name), value in zip(names, before):
            setattr(module, name, value)


def run_one(cfg: dict) -> dict:
    with _variant(cfg):
        return _run_one(cfg)


def _run_one(cfg: dict) -> dict:
    t0 = time.time()
    torch.set_num_threads(1)
    xtr_all, ytr_all, xte, yte = data()
    g = torch.Generator().manual_seed(1000 + cfg["seed"])
    T, N, E, B, H = cfg["tasks"], cfg["n"], cfg["epochs"], cfg["batch"], cfg["hidden"]
    n_eval = cfg.get("n_eval", 2000)
    evals = {"val": (xtr_all[50000:50000 + n_eval], ytr_all[50000:50000 + n_eval]),
             "test": (xte[:n_eval], yte[:n_eval])}
    task, xtr, ytr, n_out = _tasks(cfg, xtr_all[:50000], ytr_all[:50000], g)
    sets = {k: [task(t, *xy) for t in range(T)] for k, xy in evals.items()}
    # the oracle preset: the shift forced cfg["oracle"] steps into each task after the first
    oracle = cfg.get("oracle")
    torch.manual_seed(cfg["seed"])
    model = nn.Sequential(nn.Linear(784, H), nn.ReLU(), nn.Linear(H, H), nn.ReLU(),
                          nn.Linear(H, n_out))
    params = list(model.parameters())
    method, peer = cfg["method"], None
    harness = method in PEERS or method in BOUNDARY_REFS
    if not harness:
        base_cls = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[cfg["opt"]]
        base = base_cls(params, lr=cfg["lr"])
    if harness:
        spec = peer_spec(method, cfg["opt"])
        spec = spec.with_options({"lr": cfg["lr"], **cfg.get("strength", {})},
                                 OPTIMIZERS[spec.optimizer])
        peer = make_method(spec, model, MethodContext(n_outputs=n_out, batch_size=B))
        tids = torch.zeros(B, dtype=torch.long)
    elif method == "plain":
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
        step_in_task = 0
        for _ in range(E):
            order = torch.randperm(len(y_t), generator=g)
            for i in range(0, len(y_t) - B + 1, B):
                idx = order[i:i + B]
                ORACLE["fire"] = oracle is not None and t > 0 and step_in_task == oracle
                step_in_task += 1
                if peer is not None:     # the harness's step: loss (+ penalty), hooks, step
                    peer.observe(x_t[idx], y_t[idx], tids)
                    continue
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(x_t[idx]), y_t[idx]).backward()
                opt.step()
        if method in BOUNDARY_REFS:     # the boundary, given: EWC takes its Fisher and anchor
            peer.end_task(t, lambda x=x_t, y=y_t: (
                (x[i:i + B], y[i:i + B], torch.zeros(len(x[i:i + B]), dtype=torch.long))
                for i in range(0, len(y), B)))
        with torch.no_grad():
            for k, task_sets in sets.items():
                for j, (xj, yj) in enumerate(task_sets):
                    R[k][t, j] = float((model(xj).argmax(1) == yj).float().mean())
    finite = all(bool(torch.isfinite(p).all()) for p in params)
    return {"cfg": cfg, "finite": finite, "secs": round(time.time() - t0, 1),
            **{k: m.tolist() for k, m in R.items()}}


def default_grid() -> list[dict]:
    """Plain and the default SWGL on one lr grid per optimizer, 3 seeds; the controls and the
    previous default (v3) at one lr each; ``long`` (the slowest) only near the tuned lrs of
    the rule search (benchmarks/rule_search.py): 222 runs, about 5 minutes on 14 cores."""
    lrs = {"sgd": (0.01, 0.015, 0.02, 0.03), "adam": (3e-5, 6e-5, 1e-4, 2e-4)}
    long_lrs = {"sgd": (0.015, 0.02), "adam": (3e-5, 6e-5)}
    probe = {"sgd": 0.02, "adam": 6e-5}
    runs = []
    for name in ("short", "long", "rotated", "splitdom"):
        sc = SCENARIOS[name]
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


#: The device preset's lr grids, bracketing the optima measured before. ``long``: plain SGD
#: 0.015 and Adam 3e-5 to 6e-5 (the first run and the rule search). ``short10k``: a local
#: 1-seed sweep (val ACC): SGD plain 61.6 / 68.0 / 65.3 at 0.015 / 0.03 / 0.06, v4 62.0 / 69.5
#: / 70.5 (still rising: 0.12 added); Adam plain 65.1 / 69.6 / 68.3 / 64.9 at 6e-5 / 1.2e-4 /
#: 2.4e-4 / 4.8e-4, v4 63.5 / 68.6 / 69.3 / 64.9.
DEVICE_LRS = {
    "long": {"sgd": (0.01, 0.015, 0.02), "adam": (3e-5, 6e-5, 1e-4)},
    "short10k": {"sgd": (0.015, 0.03, 0.06, 0.12), "adam": (6e-5, 1.2e-4, 2.4e-4, 4.8e-4)},
}
#: Each peer's strength values: two of the values its harness tuning grid holds (the
#: ``tune_grid`` that ``swgl bench --tune`` searches, ``swgl.bench.tuning``), those around the
#: best of the pilot in docs/results.md ("Boundary-free peers").
PEER_STRENGTH: dict[str, dict[str, tuple]] = {
    "stream-ewc": {"lam": (100.0, 1000.0)},
    "stream-mas": {"lam": (0.1, 1.0)},
    "stream-si": {"lam": (1.0, 100.0)},
    "l2-init": {"lam": (1e-3, 1e-2)},
    "upgd": {"sigma": (1e-3, 1e-2)},
    "mesu": {"N": (1e4, 1e5)},
    "bgd": {"sigma_init": (0.01, 0.02)},
}
#: UPGD's step is the SGD step times ``1 - s``, ``s = sigmoid(scaled utility)``, about 0.5 for
#: most weights: its lr grid is the SGD grid times 2 (the same raw step).
PEER_LR_SCALE = {"upgd": 2.0}
#: The order of the peers in a grid: a run cut short keeps the first ones whole.
PEER_ORDER = ("stream-ewc", "upgd", "stream-si", "stream-mas", "l2-init", "mesu", "bgd")


def own_lrs(method: str) -> tuple | None:
    """A peer's own lr grid if its lr is not the family's (MESU, BGD: a multiplier of sigma^2):
    its harness tuning grid's; else None."""
    own = getattr(METHODS[PEERS[method]["sgd"]].strategy, "tune_grid", {}).get("lr")
    return None if own is None else tuple(own)


def peer_lrs(method: str, family_lrs: tuple) -> tuple:
    """The lrs a peer is tuned over: its row family's grid (scaled for UPGD), or its own."""
    if own_lrs(method) is not None:
        return own_lrs(method)
    return tuple(float(f"{lr * PEER_LR_SCALE.get(method, 1.0):.3g}") for lr in family_lrs)


def strength_points(method: str) -> list[dict]:
    grid = PEER_STRENGTH[method]
    keys = list(grid)
    return [dict(zip(keys, v)) for v in itertools.product(*(grid[k] for k in keys))]


def method_runs(scenario: str, method: str, lrs: dict, seeds=(0, 1, 2), **extra) -> list[dict]:
    """Every (optimizer, lr, strength, seed) run of ``method`` on ``scenario``; ``lrs`` maps the
    optimizer to the family's lr grid."""
    runs = []
    for opt, grid in lrs.items():
        if method in PEERS and opt not in PEERS[method]:
            continue
        points = strength_points(method) if method in PEERS else [{}]
        method_lrs = peer_lrs(method, grid) if method in PEERS else grid
        for strength in points:
            for lr in method_lrs:
                for seed in seeds:
                    r = {**dict(seed=seed, batch=64, hidden=256, opt=opt, scenario_name=scenario),
                         **SCENARIOS[scenario], "lr": lr, "method": method, **extra}
                    if strength:
                        r["strength"] = strength
                    runs.append(r)
    return runs


def device_grid() -> list[dict]:
    """The second run of issue 12, sized for 15 processes and ~520 s, in priority order:
    (a) ``long``: plain and v4 (SGD, Adam), 3 lrs x 3 seeds (36 runs); (b) ``short10k``
    (``short`` with 10k samples per task, one pass): plain and v4 (48 runs), then every peer,
    4 lrs (MESU, BGD: their 3 own) x 2 strengths x 3 seeds (252 runs); (c) the peers on
    ``long``, 3 lrs x 2 strengths x 3 seeds, one whole method after another (PEER_ORDER) as
    far as the time goes (198 runs; about the first three fit).

    Measured on the device machine (15 processes): a ``long`` run takes 21-44 s plain, 52-87 s
    with v4; a ``short10k`` run 5-8 s plain, 12-17 s with v4; the peers cost about as much as
    plain (UPGD 1.4x, locally). (a) and the plain/v4 part of (b) finished in 136 s there."""
    runs = []
    for m in ("plain", "swgl"):
        runs += method_runs("long", m, DEVICE_LRS["long"])
    for m in ("plain", "swgl", *PEER_ORDER):
        runs += method_runs("short10k", m, DEVICE_LRS["short10k"])
    for m in PEER_ORDER:
        runs += method_runs("long", m, DEVICE_LRS["long"])
    return runs


def smoke_grid() -> list[dict]:
    """A seconds-long grid through every code path (plain, v4, a family peer on SGD and Adam,
    an own-optimizer peer, two strengths): 2 tasks x 256 samples, for tests and a local check."""
    small = dict(tasks=2, n=256, epochs=1, hidden=32, n_eval=200)
    runs = []
    for m in ("plain", "swgl", "stream-ewc", "mesu"):
        runs += method_runs("short", m, {"sgd": (0.05,), "adam": (1e-3,)}, seeds=(0,), **small)
    return [r for r in runs if r["lr"] != 4.0]               # MESU: lr 1 and 2 only


#: The v5 run's lr grids (fifth session): each brackets plain's and v5's optima from the rule
#: search (benchmarks/rule_search.py, round 5).
V5_LRS = {
    "long": {"sgd": (0.01, 0.02, 0.04), "adam": (3e-5, 6e-5, 1.2e-4)},
    "short": {"sgd": (0.01, 0.02, 0.04), "adam": (5e-5, 1e-4, 2e-4)},
    "rotated": {"sgd": (0.03, 0.06, 0.12, 0.24), "adam": (5e-5, 1e-4, 2e-4, 4e-4)},
    "splitdom": {"sgd": (0.0025, 0.005, 0.01, 0.02), "adam": (7.5e-6, 1.5e-5, 3e-5, 6e-5)},
}


def v5_grid() -> list[dict]:
    """Plain against rule ``v5`` (``swgl-v5``) on the four regimes, 3 seeds, and v4
    (``swgl-v4``; the stored results of the fifth session name it ``swgl``, the default then)
    on the two fast ones: 216 runs, about 4 minutes on 16 cores (the slow ``long`` first)."""
    runs = []
    for sc, lrs in V5_LRS.items():
        runs += method_runs(sc, "plain", lrs)
        runs += method_runs(sc, "swgl-v5", lrs, swgl={"rule": "v5"})
        if sc in ("rotated", "splitdom"):
            runs += method_runs(sc, "swgl-v4", lrs, swgl={"rule": "v4"})
    order = {"long": 0, "short": 1}
    return sorted(runs, key=lambda r: (order.get(r["scenario_name"], 2), r["method"] == "plain"))


#: v5's pull strengths around its default (0.01, in the v5 preset) and the lrs around v5's
#: tuned ones (short/SGD up to 0.08, where v5 was tuned at the 0.01 strength)
STRENGTHS = (0.003, 0.03)
STRENGTH_LRS = {**V5_LRS, "short": {**V5_LRS["short"], "sgd": (0.02, 0.04, 0.08)}}


def v5_strength_grid() -> list[dict]:
    """v5 at the pull strengths :data:`STRENGTHS` (``swgl-v5-c<strength>``) on the four
    regimes, 3 seeds: 168 runs, about 5 minutes on 16 cores; report it with the v5 preset's
    results (plain and v5 at 0.01 come from there)."""
    runs = []
    for sc, lrs in STRENGTH_LRS.items():
        for c in STRENGTHS:
            runs += method_runs(sc, f"swgl-v5-c{c}", lrs, swgl={"rule": "v5", "consolidation": c})
    order = {"long": 0, "short": 1}
    return sorted(runs, key=lambda r: order.get(r["scenario_name"], 2))


#: The seventh session's grid of v5's fading pull, (strength, horizon), both optimizers
HORIZON_LRS = {
    "long": {"sgd": (0.02, 0.04, 0.08), "adam": (6e-5, 1.2e-4, 2.4e-4)},
    "short": {"sgd": (0.04, 0.08, 0.16), "adam": (1e-4, 2e-4, 4e-4)},
    "rotated": {"sgd": (0.06, 0.12, 0.24), "adam": (1e-4, 2e-4, 4e-4)},
    "splitdom": {"sgd": (0.005, 0.01, 0.02), "adam": (1.5e-5, 3e-5, 6e-5)},
}
HORIZON_POINTS = ((0.1, 20.0), (0.3, 20.0), (0.1, 50.0), (0.03, 50.0))


#: The ninth session's grid: v5's pull strong and never fading (horizon 0), for Adam above
#: all (its lrs: plain's tuned lr x 0.5, 1, 2, 4, 8: a pull that holds the weights calls for
#: a larger lr), and two points for SGD
STRONG_LRS = {
    "long": {"adam": (3e-5, 6e-5, 1.2e-4, 2.4e-4, 4.8e-4), "sgd": HORIZON_LRS["long"]["sgd"]},
    "short": {"adam": (5e-5, 1e-4, 2e-4, 4e-4, 8e-4), "sgd": HORIZON_LRS["short"]["sgd"]},
    "rotated": {"adam": (1e-4, 2e-4, 4e-4, 8e-4, 1.6e-3), "sgd": HORIZON_LRS["rotated"]["sgd"]},
    "splitdom": {"adam": (7.5e-6, 1.5e-5, 3e-5, 6e-5, 1.2e-4),
                 "sgd": HORIZON_LRS["splitdom"]["sgd"]},
}
STRONG_POINTS = {"adam": (0.1, 0.3, 1.0), "sgd": (0.1, 0.3)}


def v5_strong_grid() -> list[dict]:
    """v5's pull at the strengths :data:`STRONG_POINTS` with no fade
    (``swgl-v5-c<strength>-h0``) on the four regimes, 3 seeds: 252 runs, Adam's first and the
    slow ``long`` first within each. Report beside the v5-horizon preset's results (plain and
    the default come from there)."""
    runs = []
    for opt, points in STRONG_POINTS.items():
        for c in points:
            for sc, lrs in STRONG_LRS.items():
                runs += method_runs(sc, f"swgl-v5-c{c:g}-h0", {opt: lrs[opt]},
                                    swgl={"rule": "v5", "consolidation": c,
                                          "consolidation_horizon": 0.0})
    order = {"long": 0, "short": 1}
    return sorted(runs, key=lambda r: (r["opt"] != "adam", order.get(r["scenario_name"], 2)))


def boundary_grid() -> list[dict]:
    """The boundary-given references (:data:`BOUNDARY_REFS`) on the scenarios of
    :data:`BOUNDARY_LRS` (``long``, ``short``, ``rotated``), both optimizers, at those lrs and
    the strengths :data:`BOUNDARY_STRENGTH`, 3 seeds: 72 runs per scenario for EWC, 54 for SI
    (378 in all). Report them beside a run of the default grid (plain and the default on the
    same scenarios)."""
    runs = []
    for (method, grids), (scenario, per_opt) in itertools.product(BOUNDARY_STRENGTH.items(),
                                                                  BOUNDARY_LRS.items()):
        for opt, lrs in per_opt.items():
            grid = grids[opt]
            keys = list(grid)
            for values in itertools.product(*(grid[k] for k in keys)):
                for lr in lrs:
                    for seed in (0, 1, 2):
                        runs.append({**dict(seed=seed, batch=64, hidden=256, opt=opt,
                                            scenario_name=scenario), **SCENARIOS[scenario],
                                     "lr": lr, "method": method,
                                     "strength": dict(zip(keys, values))})
    return runs


def v5_horizon_grid() -> list[dict]:
    """v5's pull at the (strength, horizon) points :data:`HORIZON_POINTS`
    (``swgl-v5-c<strength>-h<horizon>``) on the four regimes, both optimizers, 3 seeds, then
    the grid edges of the default (0.03, 20: ``swgl``; its other lrs are the v5-strength
    preset's, run by ``v5_pull_decay.py``) and of plain: 300 runs, the slow ``long`` first."""
    runs = []
    for c, h in HORIZON_POINTS:
        for sc, lrs in HORIZON_LRS.items():
            runs += method_runs(sc, f"swgl-v5-c{c:g}-h{h:g}", lrs,
                                swgl={"rule": "v5", "consolidation": c, "consolidation_horizon": h})
    runs += method_runs("short", "swgl", {"sgd": (0.16,)})
    runs += method_runs("long", "swgl", {"sgd": (0.08, 0.16)})
    runs += method_runs("long", "plain", {"sgd": (0.005,)})
    order = {"long": 0, "short": 1}
    return sorted(runs, key=lambda r: order.get(r["scenario_name"], 2))


#: The default's choice (twelfth session): v6's lr grids (its pilot's, tuned lr in the middle;
#: SGD's long one shifted up, where 0.16 was its edge) and v5's (V5_LRS; SGD's short one shifted
#: up, where v5 was tuned at 0.04)
V6_LRS = {
    "long": {"sgd": (0.04, 0.08, 0.16), "adam": (1.2e-4, 2.4e-4, 4.8e-4)},
    "short": {"sgd": (0.04, 0.08, 0.16), "adam": (2e-4, 4e-4, 8e-4)},
    "rotated": {"sgd": (0.06, 0.12, 0.24), "adam": (1e-4, 2e-4, 4e-4)},
    "splitdom": {"sgd": (0.005, 0.01, 0.02), "adam": (1.5e-5, 3e-5, 6e-5)},
}
CHOICE_V5_LRS = {**V5_LRS, "short": {**V5_LRS["short"], "sgd": (0.02, 0.04, 0.08)}}
#: the peers' lrs on ``long``: plain's, moved down for SGD (the device preset's SGD optimum
#: sat at its lowest lr, 0.01)
CHOICE_PEER_LRS = {"sgd": (0.005, 0.01, 0.02), "adam": (3e-5, 6e-5, 1e-4)}


def choice_grid() -> list[dict]:
    """The default's choice in one run (issue 12): plain, v5 (the default until then) and v6,
    each on its own lr grid, on the four regimes, 3 seeds (240 runs); then the boundary-free
    peers on ``long`` (stream EWC, stream SI, UPGD), 3 lrs x 2 strengths x 3 seeds (90 runs).
    ``long`` first (the slowest), the peers last: a run cut by a time limit keeps the
    comparison whole."""
    runs = []
    for sc in ("long", "short", "rotated", "splitdom"):
        runs += method_runs(sc, "plain", V5_LRS[sc])
        runs += method_runs(sc, "swgl-v5", CHOICE_V5_LRS[sc], swgl={"rule": "v5"})
        runs += method_runs(sc, "swgl-v6", V6_LRS[sc], swgl={"rule": "v6"})
    for m in ("stream-ewc", "stream-si", "upgd"):
        runs += method_runs("long", m, CHOICE_PEER_LRS)
    return runs


#: v6's detector constants, ``(SHIFT_RATIO, REFRACTORY[, WARMUP])``, tried against its own
#: (2.0, 50, 50): a lower ratio, or a shorter refractory period (and warm-up), for more shifts
#: found in short tasks (thirteenth session); a longer warm-up, against the false shifts early
#: in the first task (fourteenth session: the warmup preset)
DETECTOR_VARIANTS = {"swgl-v6-ratio1.5": (1.5, 50), "swgl-v6-refr25": (2.0, 25)}
WARMUP_VARIANTS = {"swgl-v6-warmup100": (2.0, 50, 100), "swgl-v6-warmup200": (2.0, 50, 200)}


def detector_grid() -> list[dict]:
    """v6 with its detector's constants changed (:data:`DETECTOR_VARIANTS`), beside v6 and
    plain, each on its own lr grid (the choice preset's), on the four regimes, 3 seeds: 300
    runs, ``long`` first."""
    runs = []
    for sc in ("long", "short", "rotated", "splitdom"):
        runs += method_runs(sc, "plain", V5_LRS[sc])
        runs += method_runs(sc, "swgl-v6", V6_LRS[sc], swgl={"rule": "v6"})
        for name, constants in DETECTOR_VARIANTS.items():
            runs += method_runs(sc, name, V6_LRS[sc], swgl={"rule": "v6"},
                                detector=list(constants))
    return runs


def _beside_v6(variants: dict[str, dict]) -> list[dict]:
    """Plain, v6 and each of ``variants`` (method name: its extra config), each on its own lr
    grid, on the four regimes (3 seeds) and the small cases (5 seeds), ``long`` first."""
    runs = []
    for sc in ("long", "short", "rotated", "splitdom", "small3", "small"):
        small = sc.startswith("small")
        lrs, seeds = (SMALL_LRS, range(5)) if small else (V6_LRS[sc], (0, 1, 2))
        runs += method_runs(sc, "plain", SMALL_LRS if small else V5_LRS[sc], seeds=seeds)
        runs += method_runs(sc, "swgl-v6", lrs, seeds=seeds, swgl={"rule": "v6"})
        for name, extra in variants.items():
            runs += method_runs(sc, name, lrs, seeds=seeds, swgl={"rule": "v6"}, **extra)
    return runs


def warmup_grid() -> list[dict]:
    """v6 with a longer warm-up before its detector's first shift (:data:`WARMUP_VARIANTS`),
    beside v6 and plain: 620 runs."""
    return _beside_v6({name: {"detector": list(constants)}
                       for name, constants in WARMUP_VARIANTS.items()})


def anchor_grid() -> list[dict]:
    """v6 with its anchor at the importance-weighted mean of the weights at its shifts
    (``swgl-v6-wanchor``, :func:`_consolidate_weighted`), beside v6 and plain: 468 runs."""
    return _beside_v6({"swgl-v6-wanchor": {"anchor": "weighted"}})


def adam_long_grid() -> list[dict]:
    """The cell on the goal's line, Adam on permuted long tasks, at 10 seeds: plain and v6,
    each on its own lr grid (the choice preset's; its seeds 0 to 2 are that run's): 60 runs."""
    lrs = {"adam": V5_LRS["long"]["adam"]}
    return (method_runs("long", "plain", lrs, seeds=range(10))
            + method_runs("long", "swgl-v6", {"adam": V6_LRS["long"]["adam"]}, seeds=range(10),
                          swgl={"rule": "v6"}))


#: the mix preset's uniform parts of v6's importance (fifteenth session)
MIXES = (0.5, 1.0)


def mix_grid() -> list[dict]:
    """v6 with part of its importance made uniform (``swgl-v6-mix<m>``,
    :func:`_mixed_importance`), each on v6's lr grid, on the four regimes, 3 seeds: 144 runs,
    ``long`` first. Plain and v6 are the choice preset's runs (the same configs): report the
    two together."""
    runs = []
    for sc in ("long", "short", "rotated", "splitdom"):
        for m in MIXES:
            runs += method_runs(sc, f"swgl-v6-mix{m:g}", V6_LRS[sc], swgl={"rule": "v6"}, mix=m)
    return runs


#: the fade preset's (consolidation, consolidation_horizon) points: v6's pull made stronger
#: and faded after each shift (sixteenth session). Stronger pulls gained on rotated and split
#: domain-IL and lost on long tasks (the eleventh session's strengths); a fade weakens the
#: pull most in long tasks (about h (1 + ln(T / h)) / T of its no-fade sum over a task of
#: T steps: 0.12 of it on long tasks, 0.6 on rotated ones, at h 20)
FADES = ((3e-3, 20.0), (3e-3, 50.0), (1e-2, 20.0), (3e-2, 20.0), (1e-2, 50.0))
#: the first fade run's best point with Adam (its first three points), run at seeds 3 to 9 on
#: long tasks, the goal's cell on the line (``--preset fade-adam-long``)
FADE_ADAM_LONG = (1e-2, 20.0)


def _fade_method(c: float, h: float) -> tuple[str, dict]:
    return f"swgl-v6-c{c:g}-h{h:g}", {"rule": "v6", "consolidation": c,
                                       "consolidation_horizon": h}


def fade_grid() -> list[dict]:
    """v6 with a stronger pull that fades (``swgl-v6-c<strength>-h<horizon>``, the options
    ``consolidation`` and ``consolidation_horizon``; :data:`FADES`), each on v6's lr grid, on
    the four regimes, 3 seeds: 360 runs, ``long`` first. Plain and v6 are the choice preset's
    runs (the same configs): report the two together."""
    runs = []
    for sc in ("long", "short", "rotated", "splitdom"):
        for c, h in FADES:
            name, swgl = _fade_method(c, h)
            runs += method_runs(sc, name, V6_LRS[sc], swgl=swgl)
    return runs


#: the per-step preset's strengths: ``consolidation`` per unit of importance per step of its
#: segment (eighteenth session: v6's best strength per regime fell with its task's length)
PER_STEP = (0.1, 0.3, 1.0)


def per_step_grid() -> list[dict]:
    """v6 with each shift's importance divided by its segment's length
    (``swgl-v6-ps<strength>``, :func:`_consolidate_per_step`) at the strengths
    :data:`PER_STEP`, beside plain and v6, each on its own lr grid (the choice preset's), on
    the four regimes, 3 seeds: 372 runs, ``long`` first."""
    runs = []
    for sc in ("long", "short", "rotated", "splitdom"):
        runs += method_runs(sc, "plain", V5_LRS[sc])
        runs += method_runs(sc, "swgl-v6", V6_LRS[sc], swgl={"rule": "v6"})
        for c in PER_STEP:
            runs += method_runs(sc, f"swgl-v6-ps{c:g}", V6_LRS[sc], per_step=True,
                                swgl={"rule": "v6", "consolidation": c})
    return runs


#: v7's floor on a segment's length tried against its own (51): the detector's first shift
#: is often a false one early in the first task (step 67 of 468, 192 of 780), whose term v7
#: then weighs 4 to 7 times a whole task's (eighteenth session)
MIN_SEGMENTS = (200.0,)


def min_segment_grid() -> list[dict]:
    """v7 with a higher floor on the segment's length (``swgl-v7-min<floor>``), on v7's lr
    grids: Adam's long tasks at ten seeds (the cell v7 lost to v6), then rotated and split
    domain-IL at three seeds (the short tasks a floor weakens): 66 runs, ``long`` first."""
    runs = []
    for floor in MIN_SEGMENTS:
        name, extra = f"swgl-v7-min{floor:g}", dict(swgl={"rule": "v7"}, min_segment=floor)
        runs += method_runs("long", name, {"adam": (1.2e-4, 2.4e-4, 4.8e-4)}, seeds=range(10),
                            **extra)
        for sc in ("rotated", "splitdom"):
            runs += method_runs(sc, name, V6_LRS[sc], **extra)
    return runs


def fade_adam_long_grid() -> list[dict]:
    """:data:`FADE_ADAM_LONG` on Adam's long tasks at seeds 3 to 9, on v6's lr grid (21 runs):
    with the fade run's seeds 0 to 2, ten seeds beside the adam-long preset's plain and v6."""
    name, swgl = _fade_method(*FADE_ADAM_LONG)
    return method_runs("long", name, {"adam": V6_LRS["long"]["adam"]}, seeds=range(3, 10),
                       swgl=swgl)


#: the oracle preset's steps into each new task at which the shift is forced (fourteenth session:
#: 3 first, then 0, after v6's own detector was found firing at step 0 or 1 of a task)
ORACLE_STEPS = (3, 0)
#: the small cases' lr grids (around the must-show test's optima: plain SGD 0.08, v6 0.16)
SMALL_LRS = {"sgd": (0.04, 0.08, 0.16, 0.32), "adam": (1e-4, 2e-4, 4e-4, 8e-4)}


def oracle_grid() -> list[dict]:
    """Is detector recall v6's limit? v6 with its shift forced at the true boundaries
    (``swgl-v6-oracle<k>``: the detector fires at step ``k`` of each new task, 0 its first,
    whose grads the detector reads before the task's first update; its EMAs advance as
    usual), beside v6 and plain, each on its own lr grid, on the four regimes (3 seeds) and on
    the small cases where v6's detector finds few shifts (5 seeds): 620 runs, ``long`` first."""
    runs = []
    for sc in ("long", "short", "rotated", "splitdom"):
        runs += method_runs(sc, "plain", V5_LRS[sc])
        runs += method_runs(sc, "swgl-v6", V6_LRS[sc], swgl={"rule": "v6"})
        for k in ORACLE_STEPS:
            runs += method_runs(sc, f"swgl-v6-oracle{k}", V6_LRS[sc], swgl={"rule": "v6"},
                                oracle=k)
    for sc in ("small3", "small"):
        runs += method_runs(sc, "plain", SMALL_LRS, seeds=range(5))
        runs += method_runs(sc, "swgl-v6", SMALL_LRS, seeds=range(5), swgl={"rule": "v6"})
        for k in ORACLE_STEPS:
            runs += method_runs(sc, f"swgl-v6-oracle{k}", SMALL_LRS, seeds=range(5),
                                swgl={"rule": "v6"}, oracle=k)
    return runs


def tensor_detector_grid(scenarios=("rotated", "splitdom", "short", "long")) -> list[dict]:
    """v6 with a detector on each tensor's own fast/slow ratio (the largest passes 2; the
    nineteenth session found the group's sum hiding the first layer's jump), beside v6 and
    plain, each on its own lr grid (the choice preset's), 3 seeds, the cheap regimes first:
    rotated and split domain-IL (780 steps a run) before short and long."""
    runs = []
    for sc in scenarios:
        runs += method_runs(sc, "plain", V5_LRS[sc])
        runs += method_runs(sc, "swgl-v6", V6_LRS[sc], swgl={"rule": "v6"})
        runs += method_runs(sc, "swgl-v6-tensor", V6_LRS[sc], swgl={"rule": "v6"},
                            tensor_detector=True)
    return runs


PRESETS = {"default": default_grid, "device": device_grid, "smoke": smoke_grid, "v5": v5_grid,
           "v5-strength": v5_strength_grid, "v5-horizon": v5_horizon_grid,
           "ewc-boundaries": boundary_grid, "v5-strong": v5_strong_grid,
           "choice": choice_grid, "detector": detector_grid,
           "oracle": oracle_grid, "warmup": warmup_grid, "anchor": anchor_grid,
           "adam-long": adam_long_grid, "mix": mix_grid, "fade": fade_grid,
           "fade-adam-long": fade_adam_long_grid, "per-step": per_step_grid,
           "min-segment": min_segment_grid, "tensor-detector": tensor_detector_grid}


def run(grid: list[dict], out: Path, jobs: int) -> None:
    """Run ``grid`` on ``jobs`` processes, in grid order (the first runs start first).

    ``out/results.json`` is rewritten (atomically) after every finished run and
    ``out/grid.json`` holds the grid, so a run cut by a time limit keeps what finished and
    ``report`` can tell a complete method grid from a partial one."""
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "grid.json", grid)
    data()                                     # loaded once, inherited by forked workers
    results, t0 = [], time.time()
    # one job runs here, without a fork: forking a process that has run autograd on CUDA
    # fails (a test process, a notebook); a pool's workers are forked to share the data
    with contextlib.ExitStack() as stack:
        if jobs == 1:
            finished = map(run_one, grid)
        else:
            pool = stack.enter_context(mp.get_context("fork").Pool(jobs))
            finished = pool.imap_unordered(run_one, grid, chunksize=1)
        for res in finished:
            results.append(res)
            _write_json(out / "results.json", results)
            c = res["cfg"]
            print(f"[{len(results)}/{len(grid)} {time.time() - t0:.0f}s] {c['scenario_name']} "
                  f"{c['opt']} {c['method']} lr={c['lr']:g} {c.get('strength', {})} "
                  f"seed={c['seed']}: {res['secs']:.0f}s, val ACC "
                  f"{_metrics(res['val'])[0]:.1f}", flush=True)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)


def _metrics(R) -> tuple[float, float, float]:
    R = np.asarray(R)
    return (100 * acc(R), 100 * learning_accuracy(R), 100 * forgetting(R))


def _strength(cfg: dict) -> str:
    """A run's strength options as a short label ("" for none): ``lam=100``."""
    return ",".join(f"{k}={v:g}" for k, v in sorted(cfg.get("strength", {}).items()))


def label(method: str) -> str:
    """The method as the table names it: a peer on its own optimizer says so."""
    own = own_optimizer(method)
    return f"{method} (own optimizer, {own.upper()})" if own else method


def summarise(results: list[dict]):
    """Per (scenario, optimizer, method, lr, strength): mean over seeds of val ACC and test
    ACC/LA/F."""
    cells = defaultdict(list)
    for r in results:
        c = r["cfg"]
        cells[(c["scenario_name"], c["opt"], c["method"], c["lr"], _strength(c))].append(r)
    table = {}
    for key, rs in cells.items():
        val = [_metrics(r["val"])[0] if r["finite"] else float("nan") for r in rs]
        test = np.array([_metrics(r["test"]) if r["finite"] else (np.nan,) * 3 for r in rs])
        table[key] = dict(val_acc=float(np.mean(val)), acc=test[:, 0].tolist(),
                          la=float(test[:, 1].mean()), forg=float(test[:, 2].mean()),
                          seeds=[r["cfg"]["seed"] for r in rs])
    return table


def tuned(table):
    """Each method's lr (and strength) chosen by mean validation ACC, per scenario and
    optimizer: ``(sc, opt, method) -> (lr, strength, row)``. A point that diverged (NaN) is
    never chosen."""
    best = {}
    for (sc, opt, method, lr, strength), row in table.items():
        key = (sc, opt, method)
        score = row["val_acc"] if np.isfinite(row["val_acc"]) else -np.inf
        if key not in best or score > best[key][3]:
            best[key] = (lr, strength, row, score)
    return {k: v[:3] for k, v in best.items()}


def _edge(table, key, lr) -> str:
    """" (grid edge)" if ``lr`` is the top or bottom of the method's lr grid (>= 3 points)."""
    lrs = sorted({k[3] for k in table if k[:3] == key})
    return " (edge)" if len(lrs) >= 3 and lr in (lrs[0], lrs[-1]) else ""


def _planned(grid: list[dict] | None):
    """(sc, opt, method) -> how many runs the grid holds."""
    count = defaultdict(int)
    for c in grid or ():
        count[(c["scenario_name"], c["opt"], c["method"])] += 1
    return count


def report(results: list[dict], out: Path, grid: list[dict] | None = None) -> str:
    """The tuned table (markdown; also ``earn_its_place_tuned.json``) and the frontier plot
    (``earn_its_place_frontier.png``). With ``grid`` (the run's ``grid.json``), a method whose
    runs did not all finish is marked ``partial k/n``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    table, lines, records = summarise(results), [], []
    best = tuned(table)
    planned = _planned(grid)
    done = _planned([r["cfg"] for r in results])
    lines.append("| scenario | optimizer | method | tuned lr | strength | ACC (test) "
                 "| delta vs tuned plain | LA | forgetting | seeds |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    order = {m: i for i, m in enumerate(("plain", "swgl", "swgl-v5", "swgl-v4", "swgl-v3",
                                         "ctrl-tensor",
                                         "ctrl-global", *PEER_ORDER))}
    for (sc, opt, method), (lr, strength, row) in sorted(
            best.items(), key=lambda kv: (kv[0][:2], order.get(kv[0][2], 99), kv[0][2])):
        plain = best.get((sc, opt, "plain"))
        acc = np.array(row["acc"])
        delta = ""
        if plain is not None and method != "plain":
            delta = f"{acc.mean() - np.mean(plain[2]['acc']):+.1f}"
        name = label(method)
        key = (sc, opt, method)
        if planned.get(key, 0) > done[key]:
            name += f" (partial: {done[key]}/{planned[key]} runs)"
        lines.append(f"| {sc} | {opt} | {name} | {lr:g}{_edge(table, key, lr)} | {strength} "
                     f"| {acc.mean():.1f} ± {acc.std():.1f} | {delta} | {row['la']:.1f} "
                     f"| {row['forg']:.1f} | {len(acc)} |")
        records.append(dict(scenario=sc, optimizer=opt, method=method, label=name, lr=lr,
                            strength=strength, lr_edge=bool(_edge(table, key, lr)),
                            acc_mean=float(acc.mean()), acc_std=float(acc.std()), la=row["la"],
                            forgetting=row["forg"], val_acc=row["val_acc"], seeds=row["seeds"],
                            runs=done[key], planned=planned.get(key)))
    (out / "earn_its_place_tuned.json").write_text(json.dumps(records, indent=1))
    _frontier(table, out, plt)
    return "\n".join(lines)


def _frontier(table, out: Path, plt) -> None:
    """ACC and LA against the lr, per scenario and optimizer; a method with a strength grid
    shows, at each lr, its strength with the best validation ACC. A peer whose lr is its own
    (MESU, BGD) is a horizontal line at its tuned ACC (its lr is not on this axis)."""
    import matplotlib.ticker

    scenarios = sorted({k[0] for k in table})
    fig, axes = plt.subplots(2, len(scenarios), figsize=(5 * len(scenarios), 8), squeeze=False)
    styles = {"plain": ("k", "o-"), "swgl": ("tab:red", "o-")}
    colors = {"swgl-v3": "tab:pink", "swgl-v5": "tab:blue", "swgl-v6": "tab:red",
              "ctrl-tensor": "tab:gray", "ctrl-global": "tab:olive",
              "stream-ewc": "tab:orange", "upgd": "tab:purple", "stream-si": "tab:green",
              "stream-mas": "tab:cyan", "l2-init": "navy", "mesu": "tab:brown",
              "bgd": "gold"}
    best = tuned(table)
    for col, sc in enumerate(scenarios):
        for row_i, opt in enumerate(("sgd", "adam")):
            ax = axes[row_i][col]
            methods = sorted({k[2] for k in table if k[:2] == (sc, opt)},
                             key=lambda m: (m not in styles, m))
            for method in methods:
                front = {}
                for k, v in table.items():
                    if k[:3] == (sc, opt, method) and (
                            k[3] not in front or v["val_acc"] > front[k[3]]["val_acc"]):
                        front[k[3]] = v
                color, style = styles.get(method, (colors.get(method),
                                                   "^-" if method in PEERS else "s-"))
                if method in PEERS and own_lrs(method) is not None:
                    acc_t = np.mean(best[(sc, opt, method)][2]["acc"])
                    ax.axhline(acc_t, ls=":", lw=1.2, color=color,
                               label=f"{label(method)} ACC (own lr {best[(sc, opt, method)][0]:g})")
                    continue
                lrs = sorted(front)
                (h,) = ax.plot(lrs, [np.mean(front[x]["acc"]) for x in lrs], style, color=color,
                               label=f"{label(method)} ACC", ms=4)
                if method in styles or method not in PEERS:
                    ax.plot(lrs, [front[x]["la"] for x in lrs], "x--", color=h.get_color(),
                            alpha=0.5, label=f"{method} LA")
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_title(f"{sc} / {opt}")
            ax.set_xlabel("learning rate")
            ax.set_ylabel("test accuracy %")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=5, loc="best")
    fig.suptitle("Stability-plasticity frontier: ACC (solid), learning accuracy (dashed)\n"
                 "peers at their best strength per lr; MESU/BGD (own lr): dotted", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "earn_its_place_frontier.png", dpi=110)
    plt.close(fig)


def read_results(path: Path) -> list:
    """A results (or grid) file: JSON, or gzipped JSON where its name ends in ``.gz`` (the
    stored results of the later runs, kept small)."""
    if path.suffix == ".gz":
        with gzip.open(path, "rt") as f:
            return json.load(f)
    return json.loads(path.read_text())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grid", help="print a grid as JSON")
    g.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="default: the first run (222 runs); device: the second run (long at "
                        "3 seeds, the peers; priority order, ~520 s on 15 processes); smoke: "
                        "12 tiny runs through every code path")
    r = sub.add_parser("run", help="run a grid")
    r.add_argument("grid", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--jobs", type=int, default=os.cpu_count())
    rep = sub.add_parser("report", help="tables and frontier plots from results.json files "
                                        "(or .json.gz; a grid.json beside one marks "
                                        "unfinished methods)")
    rep.add_argument("results", type=Path, nargs="+")
    rep.add_argument("--out", type=Path, default=Path("."))
    args = ap.parse_args(argv)
    if args.cmd == "grid":
        json.dump(PRESETS[args.preset](), sys.stdout)
    elif args.cmd == "run":
        t0 = time.time()
        run(json.loads(args.grid.read_text()), args.out, args.jobs)
        print(f"done in {time.time() - t0:.0f} s")
    else:
        results = [r for p in args.results for r in read_results(p)]
        grids = list(dict.fromkeys(p.parent / "grid.json" for p in args.results))  # once each
        grid = ([c for p in grids for c in json.loads(p.read_text())]
                if all(p.exists() for p in grids) else None)
        print(report(results, args.out, grid))


if __name__ == "__main__":
    main()
