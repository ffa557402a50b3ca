"""benchmarks/detector_recall.py: the per-boundary summary of a detector trace (issue 12)."""

import pytest

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
