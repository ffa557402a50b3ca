"""Rule v6 from the library beside the controls of its pilot (eleventh session, issue 12).

* ``v6``: ``SWGL.wrap(base, rule="v6")`` with its defaults, at the lr the pilot chose on
  validation (``v5_adam_pilots.py si-pull``, no damping, strength 3e-4) and, for SGD on
  ``long`` where that lr was the grid's edge, at twice it;
* the controls: the same pilot with its importance ``F`` replaced by its tensor mean
  (``tensor``) or the group's mean (``global``): the pull made uniform. If they do as well,
  the per-element importance adds nothing. Rotated is left out (no gain to explain there).

Through ``earn_its_place.py``'s harness, 3 seeds, ``long`` first (the slowest)::

    python benchmarks/v6_controls_grid.py OUT JOBS
    python benchmarks/pilot_summary.py OUT/results.json

``--only REGIME:OPT`` keeps one cell of the grid (the fifteenth session ran ``splitdom:sgd``,
the cell the time limit cut). The controls run as the pilot's rule v5 (``v5_adam_pilots``);
before the fifteenth session their configs named no rule and, once v6 was the default, ran v6.

``--more-seeds``: instead, plain and v6 with Adam on ``long`` and ``short`` at three more seeds
(3, 4, 5), each on its own lr grid (plain's the stored runs', v6's the pilot's), to tell
whether v6's gain on ``long`` (+2.0 and +1.9 at seeds 0 to 2) holds.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import earn_its_place as e  # noqa: E402
import v5_adam_pilots as vp  # noqa: E402

#: the controls' lr grids (the pilot's)
ADAM = {"long": (1.2e-4, 2.4e-4, 4.8e-4), "short": (2e-4, 4e-4, 8e-4),
        "rotated": (1e-4, 2e-4, 4e-4), "splitdom": (1.5e-5, 3e-5, 6e-5)}
SGD = {"long": (0.04, 0.08, 0.16), "short": (0.04, 0.08, 0.16),
       "rotated": (0.06, 0.12, 0.24), "splitdom": (0.005, 0.01, 0.02)}
#: v6's lrs: the pilot's tuned cells (and SGD long's edge, doubled)
V6 = {"adam": {"long": (2.4e-4,), "short": (4e-4,), "rotated": (2e-4,), "splitdom": (3e-5,)},
      "sgd": {"long": (0.08, 0.16), "short": (0.08,), "rotated": (0.24,), "splitdom": (0.01,)}}


def grid() -> list[dict]:
    runs = []
    for sc in ("long", "short", "splitdom", "rotated"):
        for opt, lrs in (("adam", ADAM), ("sgd", SGD)):
            runs += e.method_runs(sc, "v6", {opt: V6[opt][sc]}, swgl={"rule": "v6"})
            if sc == "rotated":
                continue
            for control in ("tensor", "global"):
                runs += e.method_runs(
                    sc, f"si-pull-l0.0003-h0-r0-d1-{control}", {opt: lrs[sc]},
                    pilot="si-pull", lam=3e-4, h=0.0, decay=1.0, control=control,
                    swgl={"lambda_reg": 0.0, "consolidation": 3e-4,
                          "consolidation_horizon": 0.0})
    return runs


#: ``--more-seeds``: the lr grids, per regime (plain's tuned lr in the middle)
MORE = {"long": {"plain": (3e-5, 6e-5, 1e-4), "v6": ADAM["long"]},
        "short": {"plain": (6e-5, 1e-4, 2e-4), "v6": ADAM["short"]}}


def more_seeds() -> list[dict]:
    runs = []
    for sc, methods in MORE.items():
        for method, lrs in methods.items():
            runs += e.method_runs(sc, method, {"adam": lrs}, seeds=(3, 4, 5),
                                  **({"swgl": {"rule": "v6"}} if method == "v6" else {}))
    return runs


def run_one(cfg: dict) -> dict:
    return vp.run_one(cfg) if "pilot" in cfg else vp._run_one(cfg)


def main() -> None:
    runs = more_seeds() if "--more-seeds" in sys.argv else grid()
    if "--only" in sys.argv:
        cell = sys.argv.pop(sys.argv.index("--only") + 1)
        if cell.count(":") != 1:
            raise SystemExit(f"--only takes REGIME:OPT, got {cell!r}")
        regime, opt = cell.split(":")
        runs = [r for r in runs if r["scenario_name"] == regime and r["opt"] == opt]
        if not runs:
            raise SystemExit(f"--only: no runs for regime {regime!r} and optimizer {opt!r}")
    e.run_one = run_one   # the forked workers inherit it
    print(len(runs), "runs", flush=True)
    out, jobs = (a for a in sys.argv[1:] if not a.startswith("--"))
    e.run(runs, Path(out), int(jobs))


if __name__ == "__main__":
    main()
