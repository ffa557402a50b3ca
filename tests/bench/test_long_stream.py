"""benchmarks/long_stream.py: the long label-permuted stream (issue 12), on synthetic data."""

import pytest
import torch

from benchmark_scripts import load

L = load("long_stream")


@pytest.fixture
def fake_data(monkeypatch):
    """50 200 training images of faint noise with one bright pixel, their class: learnt in
    a few dozen steps (no Fashion-MNIST needed)."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (50200,), generator=g)
    x = 0.1 * torch.rand(50200, 784, generator=g)
    x[torch.arange(50200), y] += 1.0
    monkeypatch.setitem(L.eip._DATA, L.eip.DATA_DIR, (x, y, x[:200], y[:200]))


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


@pytest.mark.parametrize("argv, message", [
    (["--segments", "0"], "--segments must be >= 1, got 0"),
    (["--jobs", "0"], "--jobs must be >= 1, got 0"),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        L.main(argv)
    assert message in capsys.readouterr().err
