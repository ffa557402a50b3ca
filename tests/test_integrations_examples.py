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


def test_hf_continual_pretraining_example(tmp_path, monkeypatch):
    """One optimizer per run lives across both domains, so SWGL's detector counts on at B."""
    transformers = pytest.importorskip("transformers")
    example = _load("hf_continual_pretraining")
    seen = []  # per phase: the run's optimizer (unwrapped from accelerate's wrapper)

    class Recording(transformers.Trainer):
        def train(self, *args, **kwargs):
            out = super().train(*args, **kwargs)
            seen.append(getattr(self.optimizer, "optimizer", self.optimizer))
            return out

    monkeypatch.setattr(example, "Trainer", Recording)
    steps = 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = example.main(
            ["--steps", str(steps), "--width", "16", "--train-seqs", "32", "--out", str(tmp_path)])
    for run in ("adamw", "swgl+adamw"):
        assert set(results[run]) == {"after A", "after B"}
        assert all(results[run]["after B"][d] > 0 for d in ("A", "B"))
    swgl = results["swgl+adamw"]
    assert swgl["after B"]["swgl"]["mean_scale"] > 0
    # phases A and B of each run (adamw, then swgl+adamw) share one optimizer object
    assert len(seen) == 4
    assert seen[0] is seen[1] and seen[2] is seen[3] and seen[0] is not seen[2]
    assert seen[3].shifts() == swgl["after B"]["swgl"]["shifts"]
    # the detector's step count continues through the switch instead of restarting at 0
    assert [s["steps"] for s in swgl["after A"]["swgl"]["shifts"]] == [steps]
    assert [s["steps"] for s in swgl["after B"]["swgl"]["shifts"]] == [2 * steps]
