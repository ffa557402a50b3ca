"""Faults in ``swgl bench`` (issue 9): SIGKILL mid-run, damaged files, bad arguments.

A killed run resumed with ``--resume`` ends with exactly the numbers of an uninterrupted run
(every field but wall-clock timings); the cells finished before the kill are reused byte for
byte; a temp file left by a kill between write and rename is never read as a cell; damaged
cell or results files give a clear message and are never mistaken for results.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from swgl import cli

#: 2 methods x 2 seeds = 4 cells of a few tenths of a second each.
ARGS = ["bench", "--dataset", "digits", "--scenario", "split-class",
        "--methods", "naive-sgd,swgl-sgd", "--seeds", "2", "--hidden", "16", "--epochs", "1",
        "--no-tune", "--train-per-task", "40", "--test-per-task", "20", "--evals-per-task", "2",
        "--no-plots", "--json"]
TIMING = {"wall_s", "time_per_step_ms", "time_per_step_ms_mean", "time_per_step_ms_std",
          "first_step_ms"}

#: Run the CLI in a child that SIGKILLs itself at a chosen point (no cleanup can run).
CHILD = textwrap.dedent("""
    import os, signal, sys
    from swgl import cli
    from swgl.bench import runner

    where, n = sys.argv[1], int(sys.argv[2])
    count = {"cells": 0, "renames": 0}

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if where == "training":  # during the n-th cell's training, after n - 1 cells finished
        real_train = runner._train_offline

        def train(cfg, scen, method, *rest):
            count["cells"] += 1
            if count["cells"] == n:
                observe, steps = method.observe, [0]

                def observe_then_die(*a):
                    steps[0] += 1
                    if steps[0] == 3:
                        die()
                    return observe(*a)
                method.observe = observe_then_die
            return real_train(cfg, scen, method, *rest)
        runner._train_offline = train
    else:  # "rename": the n-th cell file is written to its temp file, then the kill
        real_replace = os.replace

        def replace(src, dst):
            if "/cells/" in str(dst):
                count["renames"] += 1
                if count["renames"] == n:
                    die()
            return real_replace(src, dst)
        os.replace = replace  # atomic_write_text (swgl.bench.results) renames through it
    sys.exit(cli.main(sys.argv[3:]))
""")


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)  # cli.main sets --threads (1)


def _bench(out: Path, *extra: str, capsys=None) -> dict:
    assert cli.main([*ARGS, "--out-dir", str(out), *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _numbers(run_dir: Path) -> dict:
    """results.json without wall-clock timings (everything else must match exactly)."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in TIMING}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x
    return strip(json.loads((run_dir / "results.json").read_text()))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run: its folder."""
    out = tmp_path_factory.mktemp("reference")
    before = torch.get_num_threads()
    try:
        assert cli.main([*ARGS, "--out-dir", str(out)]) == 0
    finally:
        torch.set_num_threads(before)
    (run_dir,) = out.iterdir()
    return run_dir


def _killed_child(out: Path, where: str, n: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, where, str(n), *ARGS, "--out-dir",
                           str(out)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    return proc


@pytest.mark.parametrize("where, n", [("training", 3), ("rename", 2)])
def test_resume_after_sigkill_gives_the_uninterrupted_numbers(where, n, reference, tmp_path,
                                                              capsys):
    _killed_child(tmp_path, where, n)
    run_dir = tmp_path / reference.name  # the run id follows the config
    cells = run_dir / "cells"
    finished = {p.name: p.read_bytes() for p in cells.glob("*.json")}
    assert len(finished) == n - 1, sorted(finished)
    assert not (run_dir / "results.json").exists()
    if where == "rename":  # the kill left the written-but-unrenamed temp file behind
        assert list(cells.glob(".*.tmp"))
    capsys.readouterr()
    out = _bench(tmp_path, "--resume", capsys=capsys)
    assert out["run_id"] == reference.name
    assert _numbers(run_dir) == _numbers(reference)
    for name, data in finished.items():  # finished cells were reused, not rewritten
        assert (cells / name).read_bytes() == data
    assert len(list(cells.glob("*.json"))) == 4


def test_external_sigkill_mid_run_then_resume(reference, tmp_path, capsys):
    """A kill from outside at an arbitrary moment (after the first cell file appears)."""
    proc = subprocess.Popen([sys.executable, "-m", "swgl.cli", *ARGS, "--out-dir",
                             str(tmp_path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    cells = tmp_path / reference.name / "cells"
    deadline = time.monotonic() + 240
    while not list(cells.glob("*.json")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no cell finished in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    _bench(tmp_path, "--resume", capsys=capsys)
    assert _numbers(tmp_path / reference.name) == _numbers(reference)


@pytest.mark.parametrize("damage", ["truncated", "binary", "a list", "no metrics"])
def test_a_damaged_cell_file_is_reported_and_recomputed(damage, reference, tmp_path, capsys,
                                                        caplog):
    _bench(tmp_path, capsys=capsys)
    run_dir = tmp_path / reference.name
    victim = sorted((run_dir / "cells").glob("*.json"))[1]
    text = victim.read_text()
    victim.write_bytes({
        "truncated": text[: len(text) // 2].encode(),
        "binary": b"\xff\xfe\x00garbage",
        "a list": b"[1, 2]",
        "no metrics": json.dumps({k: v for k, v in json.loads(text).items()
                                  if k != "metrics"}).encode(),
    }[damage])
    with caplog.at_level("WARNING", logger="swgl.bench.runner"):
        _bench(tmp_path, "--resume", capsys=capsys)
    assert victim.name in caplog.text and "recomputing" in caplog.text
    assert json.loads(victim.read_text())["R"] == json.loads(text)["R"]  # rebuilt
    assert _numbers(run_dir) == _numbers(reference)


@pytest.mark.parametrize("damage", [b"", b'{"run_id": "x", "summ', b"\x80\x81", b"[]"])
def test_a_damaged_results_file_gives_a_clear_error(damage, reference, tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.json").write_bytes(damage)
    with pytest.raises(SystemExit) as exc:
        cli.main(["plot", str(run_dir)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "results.json is damaged" in err and "--resume" in err
    assert (run_dir / "results.json").read_bytes() == damage  # nothing overwritten
    assert not list(run_dir.glob("*.png"))


def test_results_files_are_written_atomically(reference):
    """Every file of a run was renamed into place: no temp files are left behind."""
    names = {p.name for p in reference.rglob("*")}
    assert {"results.json", "results.csv", "cells.csv", "config.json"} <= names
    assert not [n for n in names if n.endswith(".tmp")]


# -- the CLI's argument errors (the rest are in tests/bench/test_cli.py) -------------------------


@pytest.mark.parametrize("argv, expected", [
    (["--scenario", "split-class,bogus"], ["scenario must be one of", "stream-input-permuted"]),
    (["--dataset", "bogus"], ["invalid choice: 'bogus'", "fashion-mnist"]),
    (["--model", "bogus"], ["invalid choice", "mlp"]),
    (["--swgl-opts", "storage=int3"], ["storage must be one of", "blockwise8", "factored"]),
    (["--swgl-opts", "rule=v9"], ["rule must be one of", "v2"]),
    (["--swgl-opts", "rule=v3,signal=x"], ["signal must be one of", "utility"]),
    (["--dataset", "fashion-mnist", "--data-dir", "/nonexistent/swgl"],
     ["/nonexistent/swgl", "apt-get install dataset-fashion-mnist", "--data-dir"]),
])
def test_bad_choices_list_the_valid_ones(argv, expected, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([*ARGS, "--out-dir", str(tmp_path), *argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for text in expected:
        assert text in err


def test_unknown_swgl_option_lists_the_valid_ones(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main([*ARGS, "--out-dir", str(tmp_path), "--swgl-opts", "alhpa=0.9"])
    err = capsys.readouterr().err
    assert "alpha" in err and "max_boost" in err
