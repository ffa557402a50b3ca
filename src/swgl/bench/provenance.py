"""The code identity hashed into every run id: results are never reused across code changes.

A cell's numbers depend on its config and on the code that trains it: swgl (library and
harness), torch. :func:`code_identity` is the swgl version, the torch version and a digest of
every ``.py`` file of the installed ``swgl`` package, read at run time (a few milliseconds),
except the modules in :data:`NOT_IN_CELLS`, which only build configs or read finished cells.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__all__ = ["NOT_IN_CELLS", "code_identity", "source_digest"]

#: Paths (relative to the package) that never run inside a cell, so editing them keeps cells.
NOT_IN_CELLS = frozenset({"cli.py", "bench/report.py", "bench/tuning.py", "bench/presets.py",
                          "bench/suite.py", "bench/defaults_study.py"})


def source_digest(root: str | Path, skip: frozenset[str] = NOT_IN_CELLS) -> str:
    """SHA-256 over the relative path and bytes of every ``.py`` file under ``root``."""
    root = Path(root)
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel in skip or "__pycache__" in path.parts:
            continue
        h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


@functools.cache
def code_identity() -> dict[str, str]:
    """``{"swgl": version, "torch": version, "source": digest of the swgl package}``."""
    import torch

    import swgl

    return {"swgl": swgl.__version__, "torch": torch.__version__,
            "source": source_digest(Path(swgl.__file__).parent)}
