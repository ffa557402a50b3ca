"""``swgl bench``: a continual-learning benchmark harness on real data.

The Python entry points are :func:`swgl.bench.runner.run` (one :class:`BenchConfig` in, a
:class:`Results` out) and :func:`swgl.bench.runner.grid` (expand a config over axes).
"""

from swgl.bench.config import BenchConfig
from swgl.bench.runner import Results, grid, run

__all__ = ["BenchConfig", "Results", "grid", "run"]
