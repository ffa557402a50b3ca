"""Research: rule v5 with a pull that fades with the time since the last detected shift, on
the four regimes of ``earn_its_place.py`` (issue 12's lead in the sixth session; ``decayB``
became the default in the seventh: its records are the default's). The fade is the library's
option ``consolidation_horizon``:

    k = C0 * F * min(1, H / tau),   tau = steps since the last shift + 1

so a task of a few hundred steps gets a strong pull right after its shift and a weak one
later, while a short task keeps it strong. Variants: ``decayA`` (H 20, the detector's shift
ratio lowered to 1.5: the module constant ``SHIFT_RATIO`` is replaced in the forked workers),
``decayB`` (H 20, the default detector: ``SWGL(..., consolidation=0.03,
consolidation_horizon=20)``). C0 = 0.03; lrs as ``earn_its_place.py``'s v5-strength preset,
3 seeds.

    python benchmarks/v5_pull_decay.py OUT JOBS [sgd|adam] [decayA,decayB]
    python benchmarks/earn_its_place.py report benchmarks/results/earn_its_place_v5/results.json \\
        benchmarks/results/earn_its_place_v5/edge_results.json OUT/results.json --out OUT
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import earn_its_place as e  # noqa: E402

import swgl.rules.consolidation as cons  # noqa: E402

#: variant -> (H, the detector's shift ratio)
VARIANTS = {"decayA": (20.0, 1.5), "decayB": (20.0, cons.SHIFT_RATIO)}
#: the pull's strength right after a shift
C0 = 0.03
_run_one = e.run_one


def run_one(cfg: dict) -> dict:
    cons.SHIFT_RATIO = VARIANTS[cfg["method"].rsplit("-", 1)[-1]][1]
    return _run_one(cfg)


def main() -> None:
    out, jobs = Path(sys.argv[1]), int(sys.argv[2])
    opt = sys.argv[3] if len(sys.argv) > 3 else "sgd"
    names = sys.argv[4].split(",") if len(sys.argv) > 4 else list(VARIANTS)
    e.run_one = run_one   # the forked workers inherit it
    grid = [r for sc, lrs in e.STRENGTH_LRS.items() for name in names
            for r in e.method_runs(sc, f"swgl-v5-{name}", lrs,
                                   swgl={"rule": "v5", "consolidation": C0,
                                         "consolidation_horizon": VARIANTS[name][0]})
            if r["opt"] == opt]
    order = {"long": 0, "short": 1}
    grid.sort(key=lambda r: order.get(r["scenario_name"], 2))
    print(len(grid), "runs", flush=True)
    e.run(grid, out, jobs)


if __name__ == "__main__":
    main()
