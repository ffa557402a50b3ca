import dataclasses
import json

import pytest

import swgl
from swgl.bench import provenance, runner, tuning
from swgl.bench.config import BenchConfig
from swgl.bench.tuning import TuneOptions

#: Two learning rates, one that cannot learn in a few steps and one that can.
LRS = {"sgd": (1e-6, 0.3)}


@pytest.fixture
def small(tiny) -> BenchConfig:
    return dataclasses.replace(tiny, scenarios=("permuted",), n_tasks=2, hidden=32, epochs=2,
                               train_per_task=200, test_per_task=60)


def _count_cells(monkeypatch) -> list:
    calls = []
    real = runner.run_cell
    monkeypatch.setattr(runner, "run_cell", lambda *a: calls.append(a[1:]) or real(*a))
    return calls


def test_tune_picks_the_lr_with_the_best_validation_score(small, tmp_path):
    opts = TuneOptions(lr_points=2, final_seeds=(0, 1), lr_ranges=LRS)
    res = tuning.tune(small, opts, out_dir=tmp_path)
    (points,) = res.val["permuted"].values()
    by_lr = {p["lr"]: p["score"] for p in points}
    assert set(by_lr) == {1e-6, 0.3}
    assert by_lr[0.3] > by_lr[1e-6] + 0.1           # the real gap, not a tie
    assert res.chosen["permuted"]["naive-sgd"] == {"lr": 0.3}
    # The grid ran on the validation split, the table on test with the chosen lr.
    val_cfg = json.loads((res.tune_dir / "grid.json").read_text())["val_config"]
    assert val_cfg["eval_split"] == "val" and val_cfg["seeds"] == [0]
    final = res.final["permuted"].config
    assert final.eval_split == "test" and final.seeds == (0, 1)
    assert final.method_opts["naive-sgd"] == {"lr": 0.3}
    (row,) = res.rows
    assert row["baseline"] == "naive-sgd" and row["delta_mean"] == 0.0
    assert row["lr_edge"] == "top"


def test_tune_writes_the_grid_table_and_frontier_and_compares_with_the_baseline(small,
                                                                                tmp_path):
    cfg = dataclasses.replace(small, methods=("swgl-sgd",))
    opts = TuneOptions(lr_points=1, final_seeds=(0, 1),
                       strength={"swgl-sgd": {"swgl.lambda_reg": (1.0, 10.0)}})
    res = tuning.tune(cfg, opts, out_dir=tmp_path)
    # The plain baseline joined the run, with the same budget (2 points each).
    assert {m: len(g) for m, g in res.grids.items()} == {"naive-sgd": 2, "swgl-sgd": 2}
    assert {p["swgl.lambda_reg"] for p in res.grids["swgl-sgd"]} == {1.0, 10.0}
    for name in ("grid.json", "tuned.json", "tuned.md", "frontier_permuted.png"):
        assert (res.tune_dir / name).is_file(), name
    assert (res.tune_dir / "frontier_permuted.png").stat().st_size > 10_000
    tuned = json.loads((res.tune_dir / "tuned.json").read_text())   # self-describing
    assert tuned["rows"] == json.loads(json.dumps(res.rows))
    assert {"units", "val_config", "final_runs", "code"} <= set(tuned)
    assert tuned["code"]["swgl"] and tuned["final_runs"]["permuted"] == res.final["permuted"].run_id
    rows = {r["method"]: r for r in res.rows}
    cells = {(c["method"], c["seed"]): c["metrics"]["acc"] for c in res.final["permuted"].cells}
    deltas = [cells[("swgl-sgd", s)] - cells[("naive-sgd", s)] for s in (0, 1)]
    assert rows["swgl-sgd"]["delta_mean"] == pytest.approx(sum(deltas) / 2)
    assert rows["swgl-sgd"]["baseline"] == "naive-sgd"
    md = (res.tune_dir / "tuned.md").read_text()
    assert "vs naive-sgd" in md and "baseline" in md and "lambda_reg" in md


def test_tune_resumes_from_cached_cells(small, tmp_path, monkeypatch):
    opts = TuneOptions(lr_points=2, final_seeds=(0,), lr_ranges=LRS)
    tuning.tune(small, opts, out_dir=tmp_path, plots=False)
    calls = _count_cells(monkeypatch)
    again = tuning.tune(small, opts, out_dir=tmp_path, resume=True, plots=False)
    assert calls == []
    assert again.chosen["permuted"]["naive-sgd"] == {"lr": 0.3}


def test_cells_of_other_code_are_not_reused(tiny, tmp_path, monkeypatch):
    first = runner.run(tiny, out_dir=tmp_path, write_reports=False)
    code = provenance.code_identity()
    calls = _count_cells(monkeypatch)
    runner.run(tiny, out_dir=tmp_path, resume=True, write_reports=False)
    assert calls == []                                   # same code: reused
    for key in code:
        changed = {**code, key: code[key] + "-changed"}
        monkeypatch.setattr(runner, "code_identity", lambda changed=changed: changed)
        again = runner.run(tiny, out_dir=tmp_path, resume=True, write_reports=False)
        assert again.run_id != first.run_id, key
        assert len(calls) == 1, key                       # recomputed
        calls.clear()


def test_source_digest_follows_the_code(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "rules.py").write_text("x = 1\n")
    (tmp_path / "bench" / "report.py").write_text("y = 1\n")
    before = provenance.source_digest(tmp_path)
    (tmp_path / "bench" / "report.py").write_text("y = 2\n")   # reads cells only
    assert provenance.source_digest(tmp_path) == before
    (tmp_path / "rules.py").write_text("x = 2\n")
    assert provenance.source_digest(tmp_path) != before


def test_code_identity_has_the_versions_and_the_installed_source(monkeypatch):
    code = provenance.code_identity()
    assert code["swgl"] == swgl.__version__ and len(code["source"]) == 64
    monkeypatch.setattr(swgl, "__version__", "9.9.9")
    provenance.code_identity.cache_clear()
    try:
        assert provenance.code_identity()["swgl"] == "9.9.9"
    finally:
        provenance.code_identity.cache_clear()


def test_equal_budget_and_baselines(tiny):
    cfg = dataclasses.replace(tiny, methods=("ewc", "swgl-adamw", "upgd", "replay"))
    methods = tuning.with_baselines(cfg)
    assert methods[:3] == ("naive-adam", "naive-adamw", "naive-sgd")
    grids = tuning.method_grids(dataclasses.replace(cfg, methods=methods), methods,
                                TuneOptions(lr_points=2))
    assert {len(g) for g in grids.values()} == {6}
    assert len({p["lr"] for p in grids["naive-sgd"]}) == 6      # plain: all budget in lr
    assert len({p["lr"] for p in grids["ewc"]}) == 2            # 2 lrs x 3 lambdas
    assert {p["lam"] for p in grids["ewc"]} == {1e2, 1e3, 1e4}
    assert tuning.baselines(cfg, cfg.methods) == {
        "ewc": "naive-adam", "swgl-adamw": "naive-adamw", "upgd": "naive-sgd",
        "replay": "naive-sgd"}


def test_lr_grid_is_log_spaced_and_inclusive():
    assert tuning.lr_grid(1e-3, 1.0, 4) == [1e-3, 1e-2, 0.1, 1.0]
    assert tuning.lr_grid(1e-4, 1e-2, 1) == [1e-3]


def test_a_tuned_option_cannot_also_be_fixed(tiny, tmp_path):
    cfg = dataclasses.replace(tiny, method_opts={"naive-sgd": {"lr": 0.5}})
    with pytest.raises(ValueError, match=r"method_opts\['naive-sgd'\] sets \['lr'\]"):
        tuning.tune(cfg, TuneOptions(lr_points=1), out_dir=tmp_path)
    # the default rule's tuned strength is its pull's (swgl.methods.swgl.STRENGTH)
    cfg = dataclasses.replace(tiny, methods=("swgl-sgd",), swgl_opts={"consolidation": 5e-4})
    with pytest.raises(ValueError, match=r"swgl_opts sets \['consolidation'\]"):
        tuning.tune(cfg, TuneOptions(lr_points=1), out_dir=tmp_path)
    # Tuning another option instead is fine (and never touches the plain baseline).
    grid = {"swgl-sgd": {"swgl.alpha": (0.9, 0.99)}}
    res = tuning.tune(cfg, TuneOptions(lr_points=1, final_seeds=(0,), strength=grid),
                      out_dir=tmp_path, plots=False)
    assert res.final["split-class"].config.method_spec("swgl-sgd").swgl["consolidation"] == 5e-4


@pytest.mark.parametrize("kwargs, error, match", [
    ({"lr_points": 0}, ValueError, "lr_points must be >= 1"),
    ({"lr_points": 1.5}, TypeError, "lr_points must be an int"),
    ({"seeds": ()}, TypeError, "seeds must be a non-empty tuple"),
    ({"lr_ranges": {"sgdd": (0.1, 1)}}, ValueError, "optimizer must be one of"),
    ({"lr_ranges": {"sgd": (1.0, 0.1)}}, ValueError, r"lr_ranges\['sgd'\]"),
])
def test_tune_options_are_validated(kwargs, error, match):
    with pytest.raises(error, match=match):
        TuneOptions(**kwargs)


def test_steps_per_task_trains_exactly_that_many_batches(tiny):
    cfg = dataclasses.replace(tiny, scenarios=("permuted",), n_tasks=2, steps_per_task=7,
                              train_per_task=20, batch_size=8)
    cell = runner.run_cell(cfg, "permuted", "naive-sgd", 0)
    assert cell["steps"] == 14   # 20 samples / batch 8 = 3 batches per pass: 2 passes + 1


def test_a_choice_at_the_edge_of_the_grid_is_flagged():
    points = [{"lr": lr} for lr in (0.01, 0.1, 1.0)]
    assert [tuning._edge(lr, points) for lr in (0.01, 0.1, 1.0)] == ["bottom", None, "top"]
    assert tuning._edge(0.1, [{"lr": 0.1}]) is None
