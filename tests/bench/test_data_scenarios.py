import gzip
import struct

import numpy as np
import pytest
import torch

from swgl.bench.data import DATASETS, load_dataset, read_idx, validation_split
from swgl.bench.scenarios import SCENARIOS, ScenarioOptions, build_scenario


def _write_idx(path, array, compress):
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
        ">" + "I" * array.ndim, *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    # closed here: left to the collector, the gzip file was still empty when read (Python 3.12)
    with (gzip.open if compress else open)(path, "wb") as f:
        f.write(data)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_roundtrip(tmp_path, compress):
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4) % 256
    path = tmp_path / ("x.gz" if compress else "x")
    _write_idx(path, a, compress)
    np.testing.assert_array_equal(read_idx(path), a)


def test_idx_folder_loads_as_standardized_images(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)),
                   True)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, (n,)), True)
    data = load_dataset("fashion-mnist", tmp_path)
    assert data.x_train.shape == (6, 1, 28, 28) and data.x_test.shape == (4, 1, 28, 28)
    assert data.y_train.dtype == torch.int64
    assert abs(float(data.x_train.mean())) < 1e-5


def test_missing_data_says_how_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path / "nowhere")


def test_unknown_dataset_lists_choices():
    with pytest.raises(ValueError, match="dataset must be one of .*digits"):
        load_dataset("imagenet")
    assert {"digits", "fashion-mnist", "mnist", "cifar10"} <= set(DATASETS)


def test_validation_split_is_disjoint_and_fixed():
    data = load_dataset("digits")
    a, b = validation_split(data), validation_split(data)
    assert torch.equal(a.x_test, b.x_test)
    assert len(a.y_train) + len(a.y_test) == len(data.y_train)


def _build(name, n_tasks=None, **opts):
    data = load_dataset("digits")
    return build_scenario(name, data, n_tasks, np.random.default_rng(0),
                          ScenarioOptions(**opts), sequence_tasks=3)


def test_split_settings():
    cls = _build("split-class")
    assert len(cls.tasks) == 5 and cls.n_outputs == 10 and cls.logit_masks() is None
    seen = [set(cls.y_train[t.train_idx].tolist()) for t in cls.tasks]
    assert seen == [{0, 1}, {2, 3}, {4, 5}, {6, 7}, {8, 9}]
    dom = _build("split-domain")
    assert dom.n_outputs == 2
    for t in range(5):
        _, y = dom.train_batch(t, dom.tasks[t].train_idx)
        assert set(y.tolist()) == {0, 1}
    task = _build("split-task")
    masks = task.logit_masks()
    assert masks.shape == (5, 10)
    assert torch.isfinite(masks[2]).nonzero().flatten().tolist() == [4, 5]


def test_permuted_tasks_permute_pixels_and_keep_labels():
    scen = _build("permuted", train_per_task=50, test_per_task=20)
    assert len(scen.tasks) == 3
    x0, y0 = scen.train_batch(0, scen.tasks[1].train_idx)
    x1, y1 = scen.train_batch(1, scen.tasks[1].train_idx)
    assert torch.equal(y0, y1) and not torch.equal(x0, x1)
    assert torch.equal(x0.flatten(1).sort(1).values, x1.flatten(1).sort(1).values)
    assert len(scen.eval_set(2)[0]) == 20


def test_rotated_task_zero_is_upright():
    scen = _build("rotated", train_per_task=10)
    idx = scen.tasks[0].train_idx
    assert torch.equal(scen.train_batch(0, idx)[0], scen.x_train[idx])
    assert not torch.allclose(scen.train_batch(1, idx)[0], scen.x_train[idx])


@pytest.mark.parametrize("name", ["stream-input-permuted", "stream-label-permuted"])
def test_streams_have_fixed_length_segments(name):
    scen = _build(name, stream_steps=7, stream_batch=4)
    assert scen.streaming and len(scen.tasks) == 3
    assert all(len(t.train_idx) == 28 for t in scen.tasks)


def test_label_stream_permutes_labels():
    scen = _build("stream-label-permuted", stream_steps=50, stream_batch=4)
    idx = scen.tasks[1].train_idx
    _, y = scen.train_batch(1, idx)
    assert not torch.equal(y, scen.y_train[idx])


def test_bad_scenario_arguments():
    with pytest.raises(ValueError, match="scenario must be one of .*permuted"):
        _build("split-everything")
    with pytest.raises(ValueError, match="fewer than 2"):
        _build("split-class", n_tasks=10)
    assert set(SCENARIOS) >= {"permuted", "rotated", "split-task", "split-domain",
                              "split-class", "stream-input-permuted", "stream-label-permuted"}
