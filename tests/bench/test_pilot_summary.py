"""benchmarks/pilot_summary.py: a pilot's tuned cells against the tuned plain optimizer."""

import json

import numpy as np

from benchmark_scripts import load

S = load("pilot_summary")


def _run(method, lr, seed, val, test, finite=True):
    """A run whose accuracy matrices give ACC ``val`` / ``test`` (%): 2 tasks, equal rows."""
    cfg = dict(method=method, lr=lr, seed=seed, scenario_name="short", opt="adam", hidden=256,
               batch=64)
    return {"cfg": cfg, "finite": finite, "val": (np.full((2, 2), val / 100)).tolist(),
            "test": (np.full((2, 2), test / 100)).tolist()}


def test_lrs_are_chosen_on_validation_and_the_delta_is_paired_by_seed(tmp_path):
    plain = [_run("plain", lr, s, v, t) for lr, v, t in ((1e-4, 70, 71), (2e-4, 68, 75))
             for s in (0, 1, 2)]
    pilot = [_run("pilot", 1e-4, s, 72, 72 + s) for s in (0, 1, 2)]
    pilot += [_run("pilot", 2e-4, s, 71, 90) for s in (0, 1, 2)]    # best on test, not on val
    pilot += [_run("pilot", 4e-4, 0, 99, 99)]                       # one seed: not a full cell
    pilot += [_run("pilot", 8e-4, s, 0, 0, finite=False) for s in (0, 1, 2)]   # diverged
    (tmp_path / "plain.json").write_text(json.dumps(plain))
    (tmp_path / "pilot.json").write_text(json.dumps(pilot))
    best = S.tuned_plain([tmp_path / "plain.json"])
    assert best[("short", "adam")][1] == 1e-4                         # chosen on validation
    lines = S.report([tmp_path / "pilot.json"], plain=best)
    assert lines[0].startswith("short adam: plain val 70.0 test 71.0 @ 0.0001")
    row = lines[1]
    assert "lr 0.0001 (edge)" in row and "test 73.0" in row and "delta +2.0" in row
    assert "0.0004" not in row
