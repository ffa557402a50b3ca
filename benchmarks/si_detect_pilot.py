"""Research pilot (tenth session, issue 12): SI given the boundaries that v5's detector finds.

SI given the true task boundaries beat tuned Adam by +2.8 points on permuted ``short`` (ninth
session), where the default SWGL does not. This pilot asks whether the boundary is the part
that SWGL lacks: SI (``swgl.bench.methods.si``, Zenke et al. 2017) with ``end_task`` called
whenever v5's detector fires (the fast EMA of the squared grad norm above ``SHIFT_RATIO``
times the slow one, with v5's constants), and no boundary given. Two forms of its penalty:

* explicit: SI as it is (``c * sum(Om (w - w*)^2)`` in the loss);
* implicit: the total gradient divided by ``1 + lr * 2 c Om`` per element before the step,
  which makes an SGD step the proximal (implicit) step of that penalty, stable at any ``c``;
  Adam's step is nearly invariant to it between boundaries (the same factor scales both its
  moments), so with Adam the two forms differ only just after a boundary.

Runs through ``earn_its_place.py``'s harness (the same data, seeds and model), against the
tuned plain optimizer and the default of the seventh session's tuned table
(``benchmarks/results/earn_its_place_v5_fade/earn_its_place_tuned.json``), and SI given the
true boundaries at the edges of the ninth session's grid on ``short``:

    python benchmarks/si_detect_pilot.py grid OUT --jobs 16     # 414 runs, ~9 min on 16 cores
    python benchmarks/si_detect_pilot.py grid OUT --jobs 16 --preset edges    # 27 runs
    python benchmarks/si_detect_pilot.py report OUT/results.json

The detector here runs on the host, on the harness's grads (the penalty's included, as SI's
path integral takes them); it mirrors ``swgl.rules.consolidation._detect`` with its
constants, and ``tests/bench/test_si_detect_pilot.py`` checks that both fire at the same steps.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from collections import defaultdict
from pathlib import Path
from types import MappingProxyType

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import earn_its_place as e  # noqa: E402

from swgl.bench.methods import METHODS  # noqa: E402
from swgl.bench.methods import si as si_method  # noqa: E402
from swgl.bench.methods.base import MethodSpec  # noqa: E402
from swgl.rules import consolidation as cons  # noqa: E402

#: plain's tuned lr per regime and optimizer (the seventh session's tuned table)
PLAIN_LR = {"long": {"adam": 6e-5, "sgd": 0.01}, "short": {"adam": 1e-4, "sgd": 0.02},
            "rotated": {"adam": 2e-4, "sgd": 0.24}, "splitdom": {"adam": 1.5e-5, "sgd": 0.01}}
TUNED = Path(__file__).parent / "results/earn_its_place_v5_fade/earn_its_place_tuned.json"


class Detector:
    """v5's shift detector on host floats: ``det = [t, f, q, t_last]``; :meth:`update` takes
    the step's squared grad norm and returns whether it is a shift."""

    def __init__(self) -> None:
        self.t = self.f = self.q = self.t_last = 0.0

    def update(self, n: float) -> bool:
        self.t += 1.0
        self.f += (1.0 - cons.B_FAST) * (n - self.f)
        self.q += (1.0 - cons.B_SLOW) * (n - self.q)
        shift = (self.t > cons.REFRACTORY and self.t - self.t_last > cons.REFRACTORY
                 and self.f / (1.0 - cons.B_FAST ** self.t)
                 > cons.SHIFT_RATIO * self.q / (1.0 - cons.B_SLOW ** self.t))
        if shift:
            self.t_last = self.t
        return shift


class SIDetect(si_method.SI):
    """SI whose ``end_task`` is called at the detector's shifts (before the step that
    detected it); ``implicit`` 1 divides the gradient by ``1 + lr * 2 c Om``."""

    hparams = MappingProxyType({**si_method.SI.hparams, "implicit": 0.0})

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.detector, self.shifts = Detector(), []

    def before_step(self) -> None:
        super().before_step()                  # SI's copies of the grads and the weights
        n = sum(float(g.float().square().sum()) for g in self._grads.values())
        if self.detector.update(n):
            self.shifts.append(int(self.detector.t))
            grads, before = dict(self._grads), dict(self._before)
            self.end_task(len(self.shifts) - 1, None)   # SI's end_task reads no batches
            self._grads, self._before = grads, before
        if self.implicit:
            lr = self.optimizer.param_groups[0]["lr"]
            for name, p in self.model.named_parameters():
                if p.grad is not None:
                    p.grad.div_(1.0 + lr * 2.0 * self.c * self.omega[name])


def register() -> None:
    """The pilot's method in the harness's tables (called by :func:`main`, before the pool
    forks, so the workers inherit it)."""
    METHODS["si-detect"] = MethodSpec("si-detect", SIDetect, "adam", tune={"c": (1.0,)})
    e.PEERS["si-detect"] = {"adam": "si-detect", "sgd": "si-detect"}


def grid() -> list[dict]:
    """Adam at plain's tuned lr x 1, 2, 4, 8 (``long``: 2, 4, 8) and c 1, 10, 100 (``long``:
    10, 100), both forms; SGD explicit at c 0.1, 1 and lr x 0.5, 1, 2, implicit at c 1, 10, 100
    and lr x 1, 2, 4 (``long`` fewer); SI given the true boundaries at the ninth session's
    edges on ``short``; 3 seeds: 414 runs, the slow ``long`` last."""
    runs = []

    def add(sc, opt, method, mults, cs, implicit=0.0):
        for m, c, seed in itertools.product(mults, cs, (0, 1, 2)):
            strength = {"c": c} if method == "si-boundaries" else {"c": c, "implicit": implicit}
            runs.append(dict(seed=seed, batch=64, hidden=256, opt=opt, scenario_name=sc,
                             **e.SCENARIOS[sc], lr=PLAIN_LR[sc][opt] * m, method=method,
                             strength=strength))

    for sc in ("short", "rotated", "splitdom", "long"):
        long = sc == "long"
        adam_lrs = (2, 4, 8) if long else (1, 2, 4, 8)
        adam_cs = (10.0, 100.0) if long else (1.0, 10.0, 100.0)
        add(sc, "adam", "si-detect", adam_lrs, adam_cs)
        add(sc, "adam", "si-detect", adam_lrs, adam_cs, 1.0)
        add(sc, "sgd", "si-detect", (1, 2) if long else (0.5, 1, 2), (0.1,) if long else (0.1, 1.0))
        add(sc, "sgd", "si-detect", (2, 4) if long else (1, 2, 4),
            (1.0, 10.0) if long else (1.0, 10.0, 100.0), 1.0)
        if sc == "short":
            add(sc, "adam", "si-boundaries", (8,), (10.0, 100.0))
            add(sc, "adam", "si-boundaries", (4,), (100.0,))
    return runs


def edges_grid() -> list[dict]:
    """Past the edges of :func:`grid`'s best Adam cells (rotated and split domain-IL: the best
    lr at the grid's end; long: between c 10 and 100), the implicit form, 3 seeds: 27 runs."""
    runs = []
    for sc, mults, cs in (("rotated", (0.5,), (100.0, 1000.0)),
                          ("rotated", (1,), (1000.0,)),
                          ("splitdom", (16,), (100.0, 1000.0)),
                          ("splitdom", (8,), (1000.0,)),
                          ("long", (2, 4), (30.0,)),
                          ("long", (1,), (10.0,))):
        for m, c, seed in itertools.product(mults, cs, (0, 1, 2)):
            runs.append(dict(seed=seed, batch=64, hidden=256, opt="adam", scenario_name=sc,
                             **e.SCENARIOS[sc], lr=PLAIN_LR[sc]["adam"] * m, method="si-detect",
                             strength={"c": c, "implicit": 1.0}))
    return runs


GRIDS = {"main": grid, "edges": edges_grid}


def report(results: list[dict], tuned: list[dict]) -> str:
    """Per (regime, optimizer, form, c): the lr with the best validation ACC (mean over
    seeds), its test ACC and the delta against tuned plain; the default's delta beside it."""
    ref = {(r["scenario"], r["optimizer"], r["label"]): r["acc_mean"] for r in tuned}
    cells = defaultdict(list)
    for r in results:
        c = r["cfg"]
        form = c["method"] + ("-implicit" if c["strength"].get("implicit") else "")
        val, test = (100 * np.asarray(r[k])[-1].mean() for k in ("val", "test"))
        cells[(c["scenario_name"], c["opt"], form, c["strength"]["c"], c["lr"])].append(
            (val, test))
    best: dict = {}
    for (*key, lr), runs in cells.items():
        v = np.asarray(runs)
        cand = (v[:, 0].mean(), v[:, 1].mean(), v[:, 1].std(), lr, len(v))
        if tuple(key) not in best or cand[0] > best[tuple(key)][0]:
            best[tuple(key)] = cand
    lines = ["| regime | opt | form | c | lr | test ACC | vs tuned plain | default vs plain |",
             "|---|---|---|---|---|---|---|---|"]
    for key in sorted(best):
        sc, opt, form, c = key
        _, test, sd, lr, n = best[key]
        lrs = sorted(k[-1] for k in cells if k[:4] == key)
        edge = " (edge)" if lr in (lrs[0], lrs[-1]) else ""
        plain = ref[(sc, opt, "plain")]
        lines.append(f"| {sc} | {opt} | {form} | {c:g} | {lr:g}{edge} | {test:.1f} ± {sd:.1f} "
                     f"(n={n}) | {test - plain:+.1f} | {ref[(sc, opt, 'swgl')] - plain:+.1f} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grid", help="run the pilot's grid")
    g.add_argument("out", type=Path)
    g.add_argument("--jobs", type=int, default=2)
    g.add_argument("--preset", choices=sorted(GRIDS), default="main")
    r = sub.add_parser("report", help="the table of a results.json")
    r.add_argument("results", type=Path)
    args = parser.parse_args(argv)
    if args.cmd == "grid":
        register()
        runs = GRIDS[args.preset]()
        print(len(runs), "runs", flush=True)
        e.run(runs, args.out, args.jobs)
    else:
        print(report(json.loads(args.results.read_text()), json.loads(TUNED.read_text())))


if __name__ == "__main__":
    main()
