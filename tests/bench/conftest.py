import pytest
import torch

from swgl.bench.config import BenchConfig


@pytest.fixture(autouse=True)
def _one_thread():
    # The CI machine is small and shared; tiny models are fastest on one thread anyway.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny() -> BenchConfig:
    """A digits config that trains in well under a second per cell."""
    return BenchConfig(dataset="digits", scenarios=("split-class",), methods=("naive-sgd",),
                       seeds=(0,), hidden=16, epochs=1, train_per_task=60, test_per_task=40,
                       evals_per_task=2, stream_steps=20, stream_batch=8, consolidate_every=7)


@pytest.fixture
def bright_pixels(monkeypatch):
    """Installs, in a benchmark harness's data cache (``earn_its_place``'s ``_DATA``), 50 200
    training images of faint noise with one bright pixel, their class (the first 200 also the
    test set): learnt in a few dozen steps, so that a new task raises the loss. No
    Fashion-MNIST needed."""
    def install(harness) -> None:
        g = torch.Generator().manual_seed(0)
        y = torch.randint(0, 10, (50200,), generator=g)
        x = 0.1 * torch.rand(50200, 784, generator=g)
        x[torch.arange(50200), y] += 1.0
        monkeypatch.setitem(harness._DATA, harness.DATA_DIR, (x, y, x[:200], y[:200]))
    return install
