"""The integration examples run end to end (tiny settings)."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lightning_example(tmp_path, capsys):
    pytest.importorskip("lightning")
    pytest.importorskip("tensorboard")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _load("lightning_example").main(
            ["--epochs", "2", "--samples", "128", "--batch-size", "32", "--log-every", "1",
             "--out", str(tmp_path)])
    assert "finished at step 8" in capsys.readouterr().out
    header = (tmp_path / "csv" / "version_1" / "metrics.csv").read_text().splitlines()[0]
    assert "swgl/all/mean_scale" in header  # the resumed run logged SWGL stats


def test_hf_continual_pretraining_example(tmp_path):
    pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = _load("hf_continual_pretraining").main(
            ["--steps", "2", "--width", "16", "--train-seqs", "32", "--out", str(tmp_path)])
    for run in ("adamw", "swgl+adamw"):
        assert set(results[run]) == {"after A", "after B"}
        assert all(results[run]["after B"][d] > 0 for d in ("A", "B"))
    assert results["swgl+adamw"]["after B"]["swgl"]["mean_scale"] > 0
