"""benchmarks/long_stream.py: the long label-permuted stream (issue 12), on synthetic data."""

import pytest
import torch

from benchmark_scripts import load
from swgl.rules import synaptic

L = load("long_stream")


@pytest.fixture
def fake_data(bright_pixels):
    bright_pixels(L.eip)


def _cfg(**kw):
    return dict(dict(opt="sgd", method="plain", lr=0.1, seed=0, segments=3, steps=10), **kw)


def test_the_default_is_the_plain_optimizer_until_its_first_shift(fake_data):
    plain, v6 = L.run_one(_cfg()), L.run_one(_cfg(method="v6"))
    assert len(plain["acc"]) == 3 and plain["F"] == []
    assert v6["acc"] == plain["acc"]           # 30 steps: inside the detector's warm-up
    assert v6["F"] == [0.0, 0.0, 0.0] and v6["finite"]


def test_a_relabelled_segment_is_a_shift_and_adds_importance(fake_data):
    """Segments long enough for the detector: a new labelling raises the loss, a shift adds
    a term of mean 1 to F, and the run leaves the plain optimizer's path."""
    plain = L.run_one(_cfg(segments=4, steps=60, lr=0.3))
    v6 = L.run_one(_cfg(segments=4, steps=60, lr=0.3, method="v6"))
    assert v6["F"][0] == 0.0                   # the first segment: no shift
    assert v6["F"][-1] == pytest.approx(round(v6["F"][-1]), abs=1e-4) and v6["F"][-1] >= 1
    assert v6["acc"] != plain["acc"]


def test_v7_divides_each_shifts_term_by_its_segment(fake_data):
    """``v7``: the opt-in rule, whose shift adds a term of mean 1 / (steps since the last
    shift) where v6's adds 1."""
    cfg = _cfg(segments=4, steps=60, lr=0.3)
    v6, v7 = L.run_one(dict(cfg, method="v6")), L.run_one(dict(cfg, method="v7"))
    shifts = round(v6["F"][-1])
    assert shifts >= 1 and 0.0 < v7["F"][-1] <= shifts / 51   # segments of 51 steps or more
    assert v7["acc"] != v6["acc"]


def test_the_controls_pull_uniformly(fake_data):
    """``uniform``: every element's F is the count of shifts; ``fixed``: F stops at 1. Both
    restore v6's importance after their run."""
    importance = synaptic._importance
    cfg = _cfg(segments=6, steps=60, lr=0.3)
    uniform, fixed = L.run_one(dict(cfg, method="uniform")), L.run_one(dict(cfg, method="fixed"))
    assert synaptic._importance is importance
    assert uniform["F"][0] == 0.0 and uniform["F"][-1] >= 3 and uniform["F"][-1] % 1 == 0
    assert fixed["F"][0] == 0.0 and fixed["F"][-1] == 1.0
    assert uniform["acc"] != fixed["acc"] and uniform["finite"] and fixed["finite"]


def test_mix_blends_v6s_importance_for_its_run_only():
    own = synaptic._importance
    w, mu, path = [torch.zeros(4)], [torch.ones(4)], [torch.tensor([0.0, 0.0, 1.1, 3.3])]
    with L._control("mix"):   # Om = path / ((w - mu)^2 + 0.1) = 0, 0, 1, 3: mean 1
        out = synaptic._importance(w, mu, path, "single")
    assert synaptic._importance is own
    torch.testing.assert_close(out[0], torch.tensor([0.5, 0.5, 1.0, 2.0]))   # 0.5 Om/mean + 0.5


def test_the_grid_takes_the_batch_and_the_optimizers():
    runs = L.grid(20, 312, [0, 1], methods=("uniform", "plain"), batch=8, optimizers=("sgd",))
    assert len(runs) == 2 * len(L.LRS["sgd"]) * 2
    assert {r["batch"] for r in runs} == {8} and {r["opt"] for r in runs} == {"sgd"}
    assert runs[0]["method"] == "uniform"      # SWGL's runs first
    runs = L.grid(20, 312, [0], methods=("mix",), optimizers=("adamw",), lrs={"adamw": (8e-4,)})
    assert [(r["method"], r["opt"], r["lr"]) for r in runs] == [("mix", "adamw", 8e-4)]


def _record(opt, method, lr, seed, acc, F=()):
    return {"cfg": dict(opt=opt, method=method, lr=lr, seed=seed), "acc": acc, "F": list(F)}


def test_the_table_takes_each_methods_best_lr_and_pairs_the_seeds():
    runs = [_record("sgd", "plain", 0.1, s, [0.5] * 5) for s in (0, 1)]
    runs += [_record("sgd", "plain", 0.2, s, [0.4] * 5) for s in (0, 1)]
    runs += [_record("sgd", "v6", 0.2, s, [0.6 + 0.1 * s] * 5, F=[3.0]) for s in (0, 1)]
    table = L.summarise(runs).splitlines()
    assert table[2].startswith("| sgd | plain | 0.1 | 50.0 | 50.0 / 50.0")
    assert table[3].startswith("| sgd | v6 | 0.2 | 65.0 |")
    assert "+15.0 ± 5.0" in table[3] and table[3].endswith("| 3 |")
    assert len(table) == 4                     # no AdamW rows without AdamW runs
    runs += [_record("sgd", "uniform", 0.1, 0, [0.4] * 5, F=[2.0])]   # seed 0 alone
    row = L.summarise(runs).splitlines()[4]
    assert row.startswith("| sgd | uniform | 0.1 | 40.0 |") and "-10.0 ± 0.0" in row
    # a stream of another shape gets its own table, never a cell of this one's
    other = _record("sgd", "uniform", 0.1, 1, [0.9] * 5, F=[9.0])
    other["cfg"].update(segments=20, steps=312, batch=8)
    tables = L.summarise(runs + [other]).split("\n\n")
    assert len(tables) == 2
    ours = next(t for t in tables if "20 segments" not in t)
    theirs = next(t for t in tables if t.startswith("20 segments x 312 steps, batch 8:"))
    assert "| sgd | uniform | 0.1 | 40.0 |" in ours and "uniform" not in theirs   # no plain


def test_the_plot_draws_each_methods_chosen_lr_and_refuses_mixed_shapes(tmp_path):
    runs = [_record(opt, m, lr, s, [0.5 + 0.01 * k for k in range(30)])
            for opt in ("sgd", "adamw") for m in ("plain", "v6") for lr in (0.1, 0.2)
            for s in (0, 1)]
    L.plot(runs, tmp_path / "stream.png")
    assert (tmp_path / "stream.png").stat().st_size > 10_000
    other = _record("sgd", "v6", 0.1, 0, [0.5] * 30)
    other["cfg"].update(segments=20, steps=312, batch=8)
    with pytest.raises(ValueError, match="several shapes"):
        L.plot(runs + [other], tmp_path / "mixed.png")


@pytest.mark.parametrize("argv, message", [
    (["--segments", "0"], "--segments must be >= 1, got 0"),
    (["--jobs", "0"], "--jobs must be >= 1, got 0"),
    (["--batch", "0"], "--batch must be >= 1, got 0"),
    (["--lrs", "0.1"], "--lrs needs one optimizer in --optimizers, got ['sgd', 'adamw']"),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        L.main(argv)
    assert message in capsys.readouterr().err
