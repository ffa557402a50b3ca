"""benchmarks/detector_recall.py: the per-boundary summary of a detector trace (issue 12)."""

import pytest
import torch

from benchmark_scripts import load

D = load("detector_recall")


def test_summary_finds_the_boundaries_a_shift_fell_near_and_the_noise_inside_tasks():
    per, tasks = 100, 3
    trace = []
    for t in range(1, per * tasks + 1):
        k = t % per
        jump = 2.5 if 0 < k <= 5 and t > per else 1.0    # a jump right after each boundary
        noise = 1.2 if t == 2 * per + 60 else 1.0         # one noisy step inside task 2
        trace.append((t, jump * noise, [jump * noise, 1.0]))
    out = {"per_task": per, "tasks": tasks, "trace": trace, "fired": [103], "val_acc": 50.0}
    s = D.summary(out)
    assert [b["step"] for b in s["boundaries"]] == [100, 200]
    assert [b["detected"] for b in s["boundaries"]] == [True, False]   # 103 is near 100 only
    assert [b["group_max"] for b in s["boundaries"]] == [2.5, 2.5]
    assert s["boundaries"][0]["tensor_max"] == [2.5, 1.0]
    assert s["inside_group"]["max"] == pytest.approx(1.2)
    assert s["inside_tensor"][1] == {"p95": 1.0, "max": 1.0}


@pytest.mark.parametrize("argv, message", [
    (["permuted", "adam", "1e-4"], "invalid choice: 'permuted'"),
    (["rotated", "adam", "0"], "lr must be > 0, got 0"),
])
def test_bad_arguments_are_named(argv, message, capsys):
    with pytest.raises(SystemExit):
        D.main(argv)
    assert message in capsys.readouterr().err


@pytest.fixture
def fake_data(monkeypatch):
    """Synthetic images for the harness the script runs (no Fashion-MNIST needed)."""
    g = torch.Generator().manual_seed(0)
    xtr, xte = torch.rand(50200, 784, generator=g), torch.rand(200, 784, generator=g)
    monkeypatch.setitem(D.eip._DATA, D.eip.DATA_DIR,
                        (xtr, xtr[:, :10].argmax(1), xte, xte[:, :10].argmax(1)))


@pytest.mark.parametrize("rule", ["v5", "v6"])
def test_a_run_traces_the_detector_at_every_step_and_restores_it(fake_data, rule, monkeypatch):
    """The probe sees every step of the CPU's detector (the fourteenth session found it
    probing a function the CPU no longer called), per group and per tensor, and the oracle
    run reports its own accuracy; the harness's detector is restored afterwards."""
    monkeypatch.setitem(D.eip.SCENARIOS, "tiny", dict(tasks=2, n=640, epochs=1))
    real = D.eip.ADVANCE
    out = D.run("tiny", "sgd", 0.1, 0, rule)
    assert [t for t, _, _ in out["trace"]] == list(range(1, 21))     # 2 tasks x 10 steps
    assert all(len(per_tensor) == 6 for _, _, per_tensor in out["trace"])   # the MLP's 6
    assert out["fired"] == []                   # 20 steps: within the detector's warm-up
    oracle = D.run("tiny", "sgd", 0.1, 0, rule, oracle_step=0)
    assert 0.0 <= oracle["val_acc"] <= 100.0 and len(oracle["trace"]) == 20
    assert D.eip.ADVANCE is real and D.eip.consolidation._advance is real
