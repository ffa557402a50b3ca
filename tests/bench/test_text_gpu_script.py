"""benchmarks/text_domains_gpu.py: its arguments (the runs themselves need the corpora)."""

import pytest

from benchmark_scripts import load


def test_methods_must_include_the_reference(capsys):
    with pytest.raises(SystemExit) as exc:
        load("text_domains_gpu").main(["--device", "cpu", "--methods", "replay", "swgl-adamw"])
    assert exc.value.code == 2
    assert "must include naive-adamw" in capsys.readouterr().err


def test_methods_are_checked_by_name(capsys):
    with pytest.raises(SystemExit):
        load("text_domains_gpu").main(["--device", "cpu", "--methods", "naive-adamw", "nope"])
    assert "invalid choice: 'nope'" in capsys.readouterr().err
