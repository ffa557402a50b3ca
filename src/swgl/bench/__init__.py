"""``swgl bench``: a continual-learning benchmark harness on real data.

The Python entry points are :func:`swgl.bench.runner.run` (one :class:`BenchConfig` in, a
:class:`Results` out), :func:`swgl.bench.runner.grid` (expand a config over axes) and
:func:`swgl.bench.tuning.tune` (the tuned protocol of ``swgl bench``).
"""

from swgl.bench.config import BenchConfig
from swgl.bench.results import Results
from swgl.bench.runner import grid, run
from swgl.bench.tuning import TuneOptions, tune

__all__ = ["BenchConfig", "Results", "TuneOptions", "grid", "run", "tune"]
