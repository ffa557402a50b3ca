"""Issue 4: choose SWGL's defaults by measurement, side by side in the bench harness.

``python -m swgl.bench.defaults_study --stage grid`` (then ``final``, ``drift``, ``modes``)
runs one stage on Fashion-MNIST and prints a markdown table (mean +- std over seeds) that
docs/results.md copies; ``--out`` also writes it as JSON. Stages:

* ``grid``: SWGL's options (signal, mode, boost ceiling, ``lambda_reg``), with SGD and AdamW,
  on Permuted Fashion-MNIST (10 tasks), next to the plain optimizers;
* ``final``: the library defaults (``swgl={}``) against naive SGD/AdamW, EWC, SI, UPGD,
  replay and SWGL + replay on permuted, rotated, split domain-IL and a streaming
  label-permuted scenario;
* ``drift``: the streaming scenario with no boundaries: ``shock`` on and off, and
  ``on_task_boundary()`` called at the true switches (an oracle a stream does not have);
* ``modes``: ``mode="grad"`` against ``mode="update"`` with SGD, SGD + momentum and AdamW.

Sizes are cut for a shared 2-core CPU (see :data:`SIZES`); every method runs at its base
optimizer's default learning rate (:data:`swgl.bench.methods.OPTIMIZERS`), SWGL included.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

from swgl.bench.config import BenchConfig
from swgl.bench.runner import Results, run

__all__ = ["SIZES", "SEEDS", "STAGES", "run_stage", "table"]

log = logging.getLogger(__name__)

#: The Fashion-MNIST regime of every stage (MLP 784-100-100-10).
SIZES: Mapping[str, Any] = MappingProxyType(dict(
    dataset="fashion-mnist", hidden=100, train_per_task=2000, test_per_task=500, epochs=2,
    batch_size=32, stream_steps=100, stream_batch=16, evals_per_task=1,
))
SEEDS = (0, 1, 2)
STREAM = "stream-label-permuted"
FINAL_SCENARIOS = ("permuted", "rotated", "split-domain", STREAM)

#: Damping only: factors in [1/10, 1] (the base optimizer's step is never enlarged).
_DAMP = {"swgl.max_boost": 1.0, "swgl.max_damping": 10.0}
#: name -> options, each applied to SWGL over SGD and over AdamW (``<name>/sgd``, ...).
GRID: dict[str, dict[str, Any]] = {
    "v2 relative grad B10 (old default)": {"swgl.signal": "relative", "swgl.mode": "grad"},
    "relative update damp": {"swgl.signal": "relative", "swgl.mode": "update", **_DAMP},
    "fisher update damp": {"swgl.signal": "fisher", "swgl.mode": "update", **_DAMP},
    "utility update B10": {"swgl.signal": "utility", "swgl.mode": "update"},
    "utility update damp": {"swgl.signal": "utility", "swgl.mode": "update", **_DAMP},
    "utility update damp lambda0": {"swgl.signal": "utility", "swgl.mode": "update",
                                    "swgl.lambda_reg": 0.0, **_DAMP},
}


def _grid_variants() -> dict[str, dict[str, Any]]:
    # the study of issue 4 compared v2 variants (v3 is v2 damping only): pinned, now that the
    # default rule is another
    return {f"{name}/{opt}": {"base": f"swgl-{opt}", "swgl.rule": "v2", **opts}
            for name, opts in GRID.items() for opt in ("sgd", "adamw")}


def _modes_variants() -> dict[str, dict[str, Any]]:
    # measured with v3 (docs/results.md); pinned, now that the default, v5, has one mode
    return {f"{mode}/{opt}": {"base": f"swgl-{opt}", "swgl.rule": "v3", "swgl.mode": mode}
            for mode in ("grad", "update") for opt in ("sgd", "sgd-momentum", "adamw")}


def _drift_variants() -> dict[str, dict[str, Any]]:
    return {f"shock{k}/{opt}": {"base": f"swgl-{opt}", "swgl.rule": "v3", "swgl.shock": float(k)}
            for k in (3, 10) for opt in ("sgd", "adamw")}


#: stage -> (scenarios, methods, variants, extra config fields)
STAGES: dict[str, tuple[tuple[str, ...], tuple[str, ...], dict[str, dict[str, Any]],
                        dict[str, Any]]] = {
    "grid": (("permuted",), ("naive-sgd", "naive-adamw", *_grid_variants()),
             _grid_variants(), {}),
    "final": (FINAL_SCENARIOS,
              ("naive-sgd", "swgl-sgd", "naive-adamw", "swgl-adamw", "ewc", "si", "upgd",
               "replay", "swgl-replay"), {}, {}),
    # Pseudo-boundaries every stream_steps batches: aligned with the true switches, so the
    # boundary-aware method sees them (the other methods ignore begin_task).
    "drift": ((STREAM,), ("naive-sgd", "swgl-sgd", "swgl-boundary-sgd", "naive-adamw",
                          "swgl-adamw", "swgl-boundary-adamw", *_drift_variants()),
              _drift_variants(), {"consolidate_every": SIZES["stream_steps"]}),
    "modes": (("permuted",), ("naive-sgd", "naive-sgd-momentum", "naive-adamw",
                              *_modes_variants()), _modes_variants(), {}),
}


def stage_config(stage: str, seeds: Sequence[int] = SEEDS) -> BenchConfig:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {sorted(STAGES)}, got {stage!r}")
    scenarios, methods, variants, extra = STAGES[stage]
    return BenchConfig(scenarios=scenarios, methods=methods, variants=variants,
                       seeds=tuple(seeds), **{**SIZES, **extra})


def run_stage(stage: str, *, seeds: Sequence[int] = SEEDS, workers: int = 1,
              out_dir: str = "runs/defaults") -> Results:
    """Run one stage (cells already on disk are reused)."""
    return run(stage_config(stage, seeds), out_dir=out_dir, resume=True, write_reports=False,
               workers=workers)


def table(results: Results) -> str:
    """A markdown table per scenario: ACC, forgetting, learning accuracy (+ online metrics)."""
    lines = []
    for scenario in results.config.scenarios:
        rows = [r for r in results.summary if r["scenario"] == scenario]
        online = any("online_acc_mean" in r for r in rows)
        head = ["method", "ACC", "forgetting", "learning acc"]
        head += ["online acc", "plasticity"] if online else []
        lines += [f"**{scenario}** ({rows[0]['n_seeds']} seeds, mean ± std)", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        keys = ["acc", "forgetting", "learning_acc"]
        keys += ["online_acc", "plasticity"] if online else []
        for r in rows:
            cells = [f"{r[k + '_mean']:.3f} ± {r[k + '_std']:.3f}" for k in keys]
            lines.append(f"| {r['method']} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    import torch

    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True, choices=sorted(STAGES))
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)), help="(default: 0,1,2)")
    p.add_argument("--workers", type=int, default=1, help="processes (default: 1)")
    p.add_argument("--out", default=None, help="also write the summary here as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    seeds = tuple(int(s) for s in args.seeds.split(","))
    res = run_stage(args.stage, seeds=seeds, workers=args.workers)
    print(table(res))  # noqa: T201 (a script's output)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"config": res.config.to_dict(), "run_id": res.run_id,
                       "summary": res.summary}, f, indent=2)


if __name__ == "__main__":
    main()
