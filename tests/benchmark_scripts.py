"""The benchmark scripts (``benchmarks/*.py`` are scripts, not a package), loaded in tests."""

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as the module ``swgl_bench_<name>`` (registered in
    ``sys.modules``, which its dataclasses and pickling need)."""
    spec = importlib.util.spec_from_file_location(f"swgl_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
