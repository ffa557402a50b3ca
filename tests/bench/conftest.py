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
