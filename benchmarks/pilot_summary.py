"""Each pilot method's tuned cell against the tuned plain optimizer, per regime and optimizer.

The plain runs are the stored ones of ``benchmarks/results/`` (every ``results*.json`` there
with ``method == "plain"`` on the harness's MLP, 3 seeds per lr; same seeds and data). A method's
lr, and plain's, is chosen by mean validation ACC; the table shows test ACC and the delta paired
by seed::

    python benchmarks/pilot_summary.py RESULTS.json [RESULTS.json ...] [--seeds 3,4,5]
        [--plain-here]

``--seeds``: the seeds a cell needs (default 0, 1, 2); ``--plain-here``: plain's runs from the
given files instead of the stored ones.
"""

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from earn_its_place import _metrics, read_results  # noqa: E402

RESULTS = Path(__file__).parent / "results"
REGIMES = ("long", "short", "rotated", "splitdom")
#: the seeds a cell needs (``--seeds``)
SEEDS = [0, 1, 2]


def _runs(paths):
    for path in paths:
        try:
            runs = read_results(Path(path))
        except (OSError, ValueError):
            continue
        if isinstance(runs, list):
            yield from (r for r in runs if isinstance(r, dict) and "cfg" in r)


def _scores(run) -> tuple[float, float]:
    return (_metrics(run["val"])[0], _metrics(run["test"])[0]) if run["finite"] else (np.nan,) * 2


def tuned_plain(paths) -> dict:
    """``(regime, opt) -> (val, lr, test per seed)`` of plain's best lr with every seed."""
    cells = defaultdict(dict)
    for r in _runs(paths):
        c = r["cfg"]
        if c.get("method") == "plain" and c.get("hidden") == 256 and c.get("batch") == 64:
            cells[(c["scenario_name"], c["opt"], c["lr"])].setdefault(c["seed"], _scores(r))
    best = {}
    for (sc, opt, lr), by_seed in cells.items():
        if set(SEEDS) <= set(by_seed):
            val = np.mean([by_seed[s][0] for s in SEEDS])
            if (sc, opt) not in best or val > best[(sc, opt)][0]:
                best[(sc, opt)] = (val, lr, np.array([by_seed[s][1] for s in SEEDS]))
    return best


def report(paths, plain=None) -> list[str]:
    plain = tuned_plain(sorted(RESULTS.rglob("results*.json"))) if plain is None else plain
    cells = defaultdict(dict)
    for r in _runs(paths):
        c = r["cfg"]
        cells[(c["scenario_name"], c["opt"], c["method"], c["lr"])][c["seed"]] = _scores(r)
    lines = []
    for sc in REGIMES:
        for opt in ("adam", "sgd"):
            methods = sorted({k[2] for k in cells if k[:2] == (sc, opt)})
            if not methods or (sc, opt) not in plain:
                continue
            pv, plr, pt = plain[(sc, opt)]
            lines.append(f"{sc} {opt}: plain val {pv:.1f} test {pt.mean():.1f} @ {plr:g}")
            for m in methods:
                lrs = sorted(k[3] for k in cells if k[:3] == (sc, opt, m)
                             and set(SEEDS) <= set(cells[k]))
                if not lrs:
                    continue
                val = {lr: np.mean([cells[(sc, opt, m, lr)][s][0] for s in SEEDS]) for lr in lrs}
                lr = max(lrs, key=lambda x: val[x] if np.isfinite(val[x]) else -np.inf)
                test = np.array([cells[(sc, opt, m, lr)][s][1] for s in SEEDS])
                edge = " (edge)" if len(lrs) > 1 and lr in (lrs[0], lrs[-1]) else ""
                lines.append(
                    f"   {m:32s} lr {lr:g}{edge}: val {val[lr]:.1f} test {test.mean():.1f}  "
                    f"delta {np.mean(test - pt):+.1f} (paired sd {np.std(test - pt):.1f})  "
                    "val by lr " + " ".join(f"{x:g}:{val[x]:.1f}" for x in lrs))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="+", type=Path)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--plain-here", action="store_true")
    args = parser.parse_args()
    SEEDS[:] = [int(x) for x in args.seeds.split(",")]
    plain = tuned_plain(args.results) if args.plain_here else None
    print("\n".join(report(args.results, plain)))


if __name__ == "__main__":
    main()
