"""benchmarks/text_domains_gpu.py: its arguments (the runs themselves need the corpora)."""

import importlib.util
import sys
from pathlib import Path

import pytest


def _script():
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "text_domains_gpu.py"
    spec = importlib.util.spec_from_file_location("swgl_bench_text_domains_gpu", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_methods_must_include_the_reference(capsys):
    with pytest.raises(SystemExit) as exc:
        _script().main(["--device", "cpu", "--methods", "replay", "swgl-adamw"])
    assert exc.value.code == 2
    assert "must include naive-adamw" in capsys.readouterr().err


def test_methods_are_checked_by_name(capsys):
    with pytest.raises(SystemExit):
        _script().main(["--device", "cpu", "--methods", "naive-adamw", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
