"""Dataset loaders: every dataset becomes standardized float images plus int64 labels.

Registry entries know where their data lives and how to tell the user to get it; the
benchmark never downloads anything unless a ``*-tv`` (torchvision) dataset is asked for.
"""

from __future__ import annotations

import gzip
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["ArrayData", "DATASETS", "DatasetInfo", "load_dataset", "read_idx", "validation_split"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArrayData:
    """A whole dataset in memory: images ``(N, C, H, W)`` float32, labels int64.

    Loaders return pixels in [0, 1]; :func:`load_dataset` standardizes them.
    """

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    n_classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


@dataclass(frozen=True)
class DatasetInfo:
    """How to load a dataset, and the per-dataset defaults that keep CPU runs cheap."""

    loader: Callable[[Path | None], ArrayData]
    default_dir: str | None
    epochs: int
    hidden: int
    train_per_task: int | None = None   # None: every sample of the task's classes
    test_per_task: int | None = None
    sequence_tasks: int = 10            # default tasks of permuted/rotated/stream scenarios


# -- IDX (MNIST-family) -------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (header {data[:4]!r})")
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _idx_loader(name: str, default_dir: str, how_to_get: str) -> Callable[[Path | None], ArrayData]:
    def load(data_dir: Path | None) -> ArrayData:
        folder = Path(data_dir or default_dir)
        arrays = {}
        for split, prefix in (("train", "train"), ("test", "t10k")):
            for kind, suffix in (("x", "images-idx3-ubyte"), ("y", "labels-idx1-ubyte")):
                path = _find_idx(folder, f"{prefix}-{suffix}")
                if path is None:
                    raise FileNotFoundError(
                        f"{name}: no {prefix}-{suffix}[.gz] in {str(folder)!r}. "
                        f"{how_to_get}"
                    )
                arrays[kind + "_" + split] = read_idx(path)
        x = {k: torch.from_numpy(v.astype(np.float32) / 255.0).unsqueeze(1)
             for k, v in arrays.items() if k.startswith("x")}
        y = {k: torch.from_numpy(v.astype(np.int64))
             for k, v in arrays.items() if k.startswith("y")}
        return ArrayData(name, x["x_train"], y["y_train"], x["x_test"], y["y_test"], 10)

    return load


# -- digits (embedded in scikit-learn) ---------------------------------------------------------


def _load_digits(data_dir: Path | None) -> ArrayData:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.images.astype(np.float32) / 16.0
    # A fixed stratified split: the test set never depends on the run's seed.
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, bunch.target, test_size=0.25, random_state=0, stratify=bunch.target
    )
    as_x = lambda a: torch.from_numpy(a).unsqueeze(1)  # noqa: E731
    as_y = lambda a: torch.from_numpy(a.astype(np.int64))  # noqa: E731
    return ArrayData("digits", as_x(x_tr), as_y(y_tr), as_x(x_te), as_y(y_te), 10)


# -- torchvision downloads ---------------------------------------------------------------------


def _torchvision_loader(name: str, cls_name: str, n_classes: int):
    def load(data_dir: Path | None) -> ArrayData:
        try:
            import torchvision
        except ImportError as exc:
            raise ImportError(
                f"dataset {name!r} downloads through torchvision: pip install torchvision "
                "(or use fashion-mnist / mnist from local IDX files)"
            ) from exc
        root = Path(data_dir or Path.home() / ".cache" / "swgl" / "data")
        cls = getattr(torchvision.datasets, cls_name)
        splits = {}
        for train in (True, False):
            ds = cls(str(root), train=train, download=True)
            x = torch.as_tensor(np.asarray(ds.data), dtype=torch.float32) / 255.0
            x = x.permute(0, 3, 1, 2) if x.ndim == 4 else x.unsqueeze(1)
            y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
            splits[train] = (x.contiguous(), y)
        return ArrayData(name, *splits[True], *splits[False], n_classes)

    return load


_FASHION_HELP = (
    "Install the Debian package (apt-get install dataset-fashion-mnist, which puts the files in "
    "/usr/share/datasets/fashion-mnist) or download the four IDX files from "
    "https://github.com/zalandoresearch/fashion-mnist and pass --data-dir."
)
_MNIST_HELP = (
    "Download the four IDX files (train-images-idx3-ubyte.gz, ...) from a MNIST mirror into a "
    "folder and pass --data-dir, or use --dataset mnist-tv to download through torchvision."
)

#: name -> how to load it and its CPU-cheap defaults (epochs per task, hidden width).
DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(_load_digits, None, epochs=3, hidden=100, train_per_task=300,
                          sequence_tasks=5),
    "fashion-mnist": DatasetInfo(
        _idx_loader("fashion-mnist", "/usr/share/datasets/fashion-mnist", _FASHION_HELP),
        "/usr/share/datasets/fashion-mnist", epochs=2, hidden=256, train_per_task=2000,
        test_per_task=1000,
    ),
    "mnist": DatasetInfo(
        _idx_loader("mnist", "/usr/share/datasets/mnist", _MNIST_HELP),
        "/usr/share/datasets/mnist", epochs=2, hidden=256, train_per_task=2000,
        test_per_task=1000,
    ),
    "mnist-tv": DatasetInfo(_torchvision_loader("mnist-tv", "MNIST", 10), None, 2, 256, 2000, 1000),
    "cifar10": DatasetInfo(_torchvision_loader("cifar10", "CIFAR10", 10), None, 2, 256, 2000, 1000),
    "cifar100": DatasetInfo(_torchvision_loader("cifar100", "CIFAR100", 100), None, 2, 256, 500,
                            200),
}

_CACHE: dict[tuple[str, str], ArrayData] = {}


def standardize(data: ArrayData) -> ArrayData:
    """Shift and scale by the training set's scalar mean and std.

    One scalar for all pixels, so permutations and rotations commute with it; zero-mean inputs
    let plain SGD train at one learning rate on every dataset.
    """
    mean, std = data.x_train.mean(), data.x_train.std()
    return ArrayData(data.name, (data.x_train - mean) / std, data.y_train,
                     (data.x_test - mean) / std, data.y_test, data.n_classes)


def load_dataset(name: str, data_dir: str | Path | None = None) -> ArrayData:
    """Load ``name`` (cached per process: a benchmark loads the same data for every cell)."""
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {name!r}")
    key = (name, str(data_dir))
    if key not in _CACHE:
        log.info("loading dataset %s from %s", name, data_dir or DATASETS[name].default_dir)
        _CACHE[key] = standardize(DATASETS[name].loader(Path(data_dir) if data_dir else None))
    return _CACHE[key]


def validation_split(data: ArrayData, fraction: float = 1 / 6) -> ArrayData:
    """Hold out ``fraction`` of the training set as the eval set (for tuning grids).

    The split is fixed (seed 0), so every grid cell tunes on the same held-out samples and the
    test set is never looked at.
    """
    n = len(data.y_train)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    n_val = int(n * fraction)
    val, train = order[:n_val].sort().values, order[n_val:].sort().values
    return ArrayData(f"{data.name}[val]", data.x_train[train], data.y_train[train],
                     data.x_train[val], data.y_train[val], data.n_classes)
