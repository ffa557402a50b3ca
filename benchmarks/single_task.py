"""Do no harm (issue 12): on a single task, with nothing to consolidate, the default SWGL
against the plain optimizer at the same learning rate. Fashion-MNIST, 10k samples, one pass,
batch 64, MLP 784-256-256-10, 3 seeds (``earn_its_place.py``'s run with one task). Prints
the table and writes JSON.

    python benchmarks/single_task.py --json single_task.json [--jobs 2] [--rule v6]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import earn_its_place as e  # noqa: E402

LRS = {"sgd": (0.05, 0.1), "adam": (1e-4, 1e-3)}


def _acc(cfg: dict) -> tuple[str, str, float, int, float]:
    r = e.run_one(cfg)
    return cfg["method"], cfg["opt"], cfg["lr"], cfg["seed"], 100 * r["test"][0][0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="write the accuracies to this file")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rule", default=None, help="SWGL's rule (default: the library's)")
    args = parser.parse_args()
    swgl = {} if args.rule is None else {"swgl": {"rule": args.rule}}
    e.data()   # loaded once, before the workers fork
    cfgs = [dict(seed=s, batch=64, hidden=256, opt=opt, scenario_name="single", tasks=1,
                 n=10000, epochs=1, lr=lr, method=m, **(swgl if m == "swgl" else {}))
            for opt, lrs in LRS.items() for lr in lrs for m in ("plain", "swgl")
            for s in range(args.seeds)]
    acc: dict[tuple, list[float]] = {}
    with mp.get_context("fork").Pool(args.jobs) as pool:
        for method, opt, lr, _, a in pool.imap_unordered(_acc, cfgs):
            acc.setdefault((opt, lr, method), []).append(a)
    name = "default SWGL" if args.rule is None else f"SWGL {args.rule}"
    print(f"| optimizer | lr | plain | {name} | delta |\n|---|---|---|---|---|")
    for opt, lrs in LRS.items():
        for lr in lrs:
            p, s = (np.array(acc[(opt, lr, m)]) for m in ("plain", "swgl"))
            print(f"| {opt} | {lr:g} | {p.mean():.1f} ± {p.std():.1f} | {s.mean():.1f} ± "
                  f"{s.std():.1f} | {s.mean() - p.mean():+.1f} |")
    if args.json:
        args.json.write_text(json.dumps([dict(optimizer=o, lr=lr, method=m, test_acc=v)
                                         for (o, lr, m), v in sorted(acc.items())], indent=1))


if __name__ == "__main__":
    main()
