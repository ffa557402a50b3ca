import dataclasses
import json
import time

import pytest
import torch

from swgl.bench import runner
from swgl.bench.config import BenchConfig


def test_class_il_known_pattern(tiny):
    # Without replay class-IL ends near 1/#tasks of the classes; replay is far better.
    cfg = dataclasses.replace(tiny, methods=("naive-sgd", "replay"), hidden=32, epochs=3,
                              train_per_task=None, test_per_task=None)
    accs = {m: runner.run_cell(cfg, "split-class", m, 0)["metrics"]["acc"]
            for m in cfg.methods}
    assert accs["naive-sgd"] < 0.3
    assert accs["replay"] > accs["naive-sgd"] + 0.2


def test_same_seed_same_numbers(tiny):
    cfg = dataclasses.replace(tiny, methods=("swgl-replay",))
    a = runner.run_cell(cfg, "split-class", "swgl-replay", 3)
    b = runner.run_cell(cfg, "split-class", "swgl-replay", 3)
    assert a["R"] == b["R"] and a["stability"] == b["stability"]
    c = runner.run_cell(cfg, "split-class", "swgl-replay", 4)
    assert c["R"] != a["R"]


def test_streaming_reports_online_metrics(tiny):
    cell = runner.run_cell(dataclasses.replace(tiny, methods=("ewc",), n_tasks=2),
                           "stream-input-permuted", "ewc", 0)
    m = cell["metrics"]
    assert 0 <= m["online_acc"] <= 1 and 0 <= m["plasticity"] <= 1
    assert cell["steps"] == 40 and len(cell["online_curve"]["acc"]) == 20


def test_a_swgl_cell_says_whether_its_detector_found_a_shift(tiny):
    from swgl.bench.report import summary_table

    # 5 permuted tasks of 10 steps (inside the detector's 50-step warm-up), then of 100
    short = dataclasses.replace(tiny, methods=("naive-sgd", "swgl-sgd"), hidden=100, epochs=1,
                                train_per_task=None, method_opts={"swgl-sgd": {"lr": 0.3}})
    long = dataclasses.replace(short, epochs=10)
    cells = [runner.run_cell(cfg, "permuted", m, 0) for cfg in (short, long)
             for m in ("naive-sgd", "swgl-sgd")]
    assert "shifted" not in cells[0]["metrics"]                 # no detector: no entry
    assert [cells[1]["metrics"]["shifted"], cells[3]["metrics"]["shifted"]] == [0.0, 1.0]
    rows = [{"scenario": "permuted", "method": "swgl-sgd", "n_seeds": 3,
             "shifted_mean": share, "shifted_std": 0.0} for share in (1.0, 1 / 3)]
    labels = list(summary_table(rows).columns[1].cells)
    assert labels == ["swgl-sgd", "swgl-sgd (no shift found in 2 of 3 runs)"]


@pytest.mark.parametrize("scenario", ["split-class", "stream-input-permuted"])
def test_the_first_step_is_timed_apart(tiny, monkeypatch, scenario):
    # a compiled path builds its kernels on the first step: seconds that are not per step
    from swgl.bench.methods.base import Method

    real = Method.observe
    calls = []

    def observe(self, x, y, tids):
        calls.append(1)
        if len(calls) == 1:
            time.sleep(0.3)
        return real(self, x, y, tids)

    monkeypatch.setattr(Method, "observe", observe)
    cfg = dataclasses.replace(tiny, methods=("naive-sgd",), n_tasks=2)
    m = runner.run_cell(cfg, scenario, "naive-sgd", 0)["metrics"]
    assert m["first_step_ms"] >= 300
    assert m["time_per_step_ms"] < 100


def test_run_writes_files_and_resume_skips_done_cells(tiny, tmp_path, monkeypatch):
    cfg = dataclasses.replace(tiny, methods=("naive-sgd", "swgl-sgd"), seeds=(0, 1))
    res = runner.run(cfg, out_dir=tmp_path)
    d = tmp_path / cfg.run_id()
    assert res.run_dir == d
    for name in ("results.json", "results.csv", "cells.csv", "config.json",
                 "acc_matrix_split-class.png", "task_curves_split-class.png",
                 "stability_split-class_swgl-sgd.png"):
        assert (d / name).is_file(), name
    assert len(list((d / "cells").glob("*.json"))) == 4
    assert not list(d.rglob("*.tmp"))
    summary = {r["method"]: r for r in json.loads((d / "results.json").read_text())["summary"]}
    assert summary["naive-sgd"]["n_seeds"] == 2

    # A lost cell is recomputed, the others come from disk.
    (d / "cells" / "split-class__swgl-sgd__seed1.json").unlink()
    calls = []
    real = runner.run_cell
    monkeypatch.setattr(runner, "run_cell", lambda *a: calls.append(a[1:]) or real(*a))
    again = runner.run(cfg, out_dir=tmp_path, resume=True, write_reports=False)
    assert calls == [("split-class", "swgl-sgd", 1)]
    assert [c["R"] for c in again.cells] == [c["R"] for c in res.cells]


def test_run_id_follows_the_config(tiny):
    assert tiny.run_id() == dataclasses.replace(tiny).run_id()
    with_swgl = dataclasses.replace(tiny, methods=("naive-sgd", "swgl-sgd"))
    assert with_swgl.run_id() != dataclasses.replace(with_swgl,
                                                     swgl_opts={"alpha": 0.9}).run_id()
    # other data files, other threads (the sums' order): other numbers, another run
    assert tiny.run_id() != dataclasses.replace(tiny, data_dir="/elsewhere").run_id()
    assert tiny.run_id() != dataclasses.replace(tiny, threads=2).run_id()
    assert tiny.run_id().startswith("digits-")


def test_grid_expands_fields_and_nested_options(tiny):
    configs = runner.grid(dataclasses.replace(tiny, methods=("naive-sgd", "swgl-sgd")),
                          epochs=[1, 2], swgl_opts__alpha=[0.9, 0.99],
                          method_opts=[{}])
    assert len(configs) == 4
    assert {(c.epochs, c.swgl_opts["alpha"]) for c in configs} == {
        (1, 0.9), (1, 0.99), (2, 0.9), (2, 0.99)}
    with pytest.raises(ValueError, match="not a BenchConfig field"):
        runner.grid(tiny, nonsense=[1])


def test_workers_must_be_positive(tiny, tmp_path):
    with pytest.raises(ValueError, match="workers"):
        runner.run(tiny, out_dir=tmp_path, workers=0)


def test_summary_mean_and_std():
    cells = [{"scenario": "s", "method": "m", "metrics": {"acc": a}} for a in (0.2, 0.4)]
    (row,) = runner.summarize(cells)
    assert row["acc_mean"] == pytest.approx(0.3) and row["acc_std"] == pytest.approx(0.1)


def test_from_dict_roundtrip(tiny):
    assert BenchConfig.from_dict(tiny.to_dict()) == tiny
    with pytest.raises(ValueError, match="unknown config keys"):
        BenchConfig.from_dict({"datset": "digits"})


def test_a_pass_drops_the_last_incomplete_batch():
    """A user's audit: a last batch of 3 samples at the tuned lr halved a single task's ACC
    (digits, 1347 samples, 5 seeds: 0.80 at 1280 against 0.44), and the validation runs, on
    5/6 of the data, had another remainder than the test runs."""
    idx = torch.arange(1347)
    batches = list(runner._task_order(idx, 32, 2 * runner._batches_per_pass(1347, 32),
                                      torch.Generator().manual_seed(0)))
    assert len(batches) == 2 * 42 and all(len(b) == 32 for b in batches)
    assert len(set(batches[0].tolist()) | set(batches[41].tolist())) == 64
    # fewer samples than a batch: one batch of them all
    assert [len(b) for b in runner._task_order(torch.arange(5), 32, 2,
                                               torch.Generator().manual_seed(0))] == [5, 5]


def test_a_cell_runs_on_the_configs_threads_and_gives_the_process_its_own_back(tiny,
                                                                               monkeypatch):
    seen = []
    real = runner._run_cell
    monkeypatch.setattr(runner, "_run_cell",
                        lambda *a: seen.append(torch.get_num_threads()) or real(*a))
    before = torch.get_num_threads()
    runner.run_cell(dataclasses.replace(tiny, threads=2), "split-class", "naive-sgd", 0)
    assert seen == [2] and torch.get_num_threads() == before
