"""Repository contracts: CI runs exactly the README's test command; the quick start example
runs on real data."""

import re
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(.*?)```", text, re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_readme_opens_with_the_two_setup_commands():
    main_job, tests = _readme_commands()[:2]
    assert main_job.endswith("swgl bench")
    assert tests.endswith("python -m pytest -q")
    assert "pip install torch==2.13.0" in main_job and "pip install torch==2.13.0" in tests


def test_ci_runs_the_readmes_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == _readme_commands()[1]


def test_quickstart_example_runs_on_real_data(monkeypatch, capsys):
    pytest.importorskip("sklearn")
    monkeypatch.setattr(sys, "argv", ["quickstart.py", "--dataset", "digits", "--train-size",
                                      "1200", "--optimizer", "sgd", "--lr", "0.1"])
    runpy.run_path(str(ROOT / "examples" / "quickstart.py"), run_name="__main__")
    accuracy = float(capsys.readouterr().out.split("test accuracy:")[1])
    assert accuracy > 0.8  # digits: 10 classes, so chance is 0.1
