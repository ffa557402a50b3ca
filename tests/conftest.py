"""Fixtures shared by the test modules."""

import pytest


@pytest.fixture(scope="session")
def fashion_mnist():
    """Fashion-MNIST from the Debian package (``swgl.bench.data``), loaded once; the tests
    that need it skip, saying how to install it, where it is missing."""
    bench_data = pytest.importorskip("swgl.bench.data")
    try:
        return bench_data.load_dataset("fashion-mnist")
    except FileNotFoundError as err:
        pytest.skip(f"Fashion-MNIST not installed ({err}); apt-get install dataset-fashion-mnist")
