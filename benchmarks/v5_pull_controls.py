"""Controls for the default's pull (issue 12, item 3): the default rule (v5, its pull fading
after 20 steps) with the per-element weight ``F`` of its pull replaced by the tensor's mean
(``ctrl5-tensor``) or by the mean over the whole model (``ctrl5-global``), v4's per-element
damping unchanged. If they do as well, the per-element part of the pull adds nothing.

Run through ``earn_its_place.py``'s harness by replacing rule v5's ``after`` phase in the
forked workers (not the library; foreach on the CPU); report it beside the default's runs:

    python benchmarks/v5_pull_controls.py OUT JOBS            # SGD, both controls
    python benchmarks/v5_pull_controls.py OUT2 JOBS --more    # their SGD grid edges; Adam
    python benchmarks/earn_its_place.py report benchmarks/results/earn_its_place_v5/results.json \\
        benchmarks/results/earn_its_place_v5_fade/results_default.json OUT/results.json --out OUT
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import earn_its_place as e  # noqa: E402

import swgl.rules as rules  # noqa: E402
import swgl.rules.consolidation as cons  # noqa: E402
from swgl.rules.base import Variants  # noqa: E402
from swgl.rules.importance import V4  # noqa: E402

LRS = {"long": {"sgd": (0.02, 0.04, 0.08)}, "short": {"sgd": (0.04, 0.08, 0.16)},
       "splitdom": {"sgd": (0.0025, 0.005, 0.01)}, "rotated": {"sgd": (0.06, 0.12, 0.24)}}
#: ``--more``: the SGD controls' grid edges, and the model-mean control with Adam
MORE_SGD = {"splitdom": {"sgd": (0.02,)}, "rotated": {"sgd": (0.48,)}}
MORE_ADAM = {"long": {"adam": (3e-5, 6e-5, 1.2e-4)}, "short": {"adam": (5e-5, 1e-4, 2e-4)},
             "splitdom": {"adam": (7.5e-6, 1.5e-5, 3e-5)}, "rotated": {"adam": (5e-5, 1e-4, 2e-4)}}
_KIND = {"kind": "tensor"}


def _controlled(F: list[torch.Tensor]) -> list[torch.Tensor]:
    if _KIND["kind"] == "tensor":
        return [torch.full_like(f, float(f.mean())) for f in F]
    mean = float(sum(f.sum() for f in F) / sum(f.numel() for f in F))
    return [torch.full_like(f, mean) for f in F]


def _after(params, snapshots, state, steps, aux, hp, ctx):
    V4.after.foreach(params, snapshots, state, steps, aux, hp, ctx)
    cons._pull(params, {**state, "consolidated": _controlled(state["consolidated"])},
               state["detector"][0], hp.consolidation, "foreach",
               horizon=hp.consolidation_horizon)


_run_one = e.run_one


def run_one(cfg: dict) -> dict:
    _KIND["kind"] = cfg["method"].rsplit("-", 1)[-1]
    rules.RULES["v5"] = dataclasses.replace(cons.V5, after=Variants(_after, _after, _after))
    return _run_one(cfg)


def main() -> None:
    out, jobs = Path(sys.argv[1]), int(sys.argv[2])
    e.run_one = run_one   # the forked workers inherit it
    if "--more" in sys.argv[3:]:
        grid = [r for sc, lrs in MORE_ADAM.items() for r in e.method_runs(sc, "ctrl5-global", lrs)]
        grid += [r for sc, lrs in MORE_SGD.items() for kind in ("tensor", "global")
                 for r in e.method_runs(sc, f"ctrl5-{kind}", lrs)]
    else:
        grid = [r for sc, lrs in LRS.items() for kind in ("tensor", "global")
                for r in e.method_runs(sc, f"ctrl5-{kind}", lrs)]
    print(len(grid), "runs", flush=True)
    e.run(grid, out, jobs)


if __name__ == "__main__":
    main()
