"""Text domains that install offline from Debian, read as raw bytes, with fixed splits.

Every domain is read from a filesystem *root* (``/`` by default; tests pass a folder that
mimics it), so the same code reads the system corpora and a tiny test corpus:

==========  ==========================================  ======================  ==============
domain      what                                        Debian package          licence
==========  ==========================================  ======================  ==============
``en``      English fortunes (no ASCII art)             ``fortunes``            BSD-style / PD
``de``      German fortunes (no ASCII art)              ``fortunes-de``         GPL-2+
``es``      Spanish fortunes (the offensive ``off/``    ``fortunes-es``         GPL-2+
            folder left out)
``it``      Italian fortunes (no banners)               ``fortunes-it``         GPL-2+
``kjv``     King James Bible, decoded by ``bible``      ``bible-kjv`` (pulls    public domain
                                                        ``bible-kjv-text``)     (text), GPL-2+
``python``  the running interpreter's standard library  (Python itself)         PSF-2.0
            ``*.py`` (no test folders)
==========  ==========================================  ======================  ==============

``bible-kjv-text`` ships the text in the BRS compressed format only, so ``kjv`` runs the
``bible`` reader of ``bible-kjv`` once per process.

Splits: a domain's bytes are cut into :data:`CHUNK`-byte chunks; chunk ``k`` is validation
if ``k % 10 == 8``, test if ``k % 10 == 9``, else training. The split never depends on a
seed, and interleaving spreads every split over all of a domain's files. Domains longer than
``max_bytes`` keep evenly spaced chunks (the stdlib is ~30 MB).

Machines without the packages (a GPU box with no network) read a *prepared* corpus:
``python -m swgl.bench.text.prepare DIR`` writes every domain's kept chunks to
``DIR/swgl-text/<domain>.txt`` (~16 MB), and a root holding such a file reads it instead of
the system files, with the same splits.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["CHUNK", "DOMAINS", "PREPARED", "DomainInfo", "TextSplits", "export", "load_domain",
           "read_domain", "split_bytes"]

log = logging.getLogger(__name__)

CHUNK = 4096
#: folder below a root holding prepared ``<domain>.txt`` files (see :func:`export`)
PREPARED = Path("swgl-text")
_FORTUNES = Path("usr/share/games/fortunes")
_SKIP_SUFFIXES = (".dat", ".u8", ".pre", "-pre")


@dataclass(frozen=True)
class DomainInfo:
    """How to read one domain below a root folder, and how to install it."""

    read: Callable[[Path], bytes]
    package: str
    description: str


@dataclass(frozen=True)
class TextSplits:
    """One domain's bytes (uint8 tensors) in three fixed splits."""

    name: str
    train: Tensor
    val: Tensor
    test: Tensor

    def split(self, which: str) -> Tensor:
        if which not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {which!r}")
        return getattr(self, which)


def _missing(domain: str, package: str, where: Path) -> FileNotFoundError:
    return FileNotFoundError(
        f"text domain {domain!r}: no corpus in {str(where)!r}. Install it with "
        f"`apt-get install {package}` (or pass --data-dir to a folder that mimics / )."
    )


def _fortune_bytes(files: list[Path]) -> bytes:
    # A line holding only '%' separates two fortunes; keep a blank line instead.
    text = b"".join(f.read_bytes() for f in files)
    return re.sub(rb"(?m)^%\n", b"\n", text)


def _fortunes(domain: str, package: str, sub: str, exclude: frozenset[str],
              pattern: str = "*") -> Callable[[Path], bytes]:
    def read(root: Path) -> bytes:
        folder = root / _FORTUNES / sub
        files = sorted(
            f for f in folder.glob(pattern)
            if f.is_file() and not f.is_symlink() and f.name not in exclude
            and not f.name.endswith(_SKIP_SUFFIXES)
        ) if folder.is_dir() else []
        if not files:
            raise _missing(domain, package, folder)
        return _fortune_bytes(files)
    return read


_VERSE = re.compile(rb"(?m)^ +\d+ ")


def _read_kjv(root: Path) -> bytes:
    data = root / "usr/lib/bible.data"
    if not data.is_file():
        raise _missing("kjv", "bible-kjv", data)
    exe = shutil.which("bible")
    if exe is None:
        raise FileNotFoundError(
            "text domain 'kjv': bible-kjv-text is compressed; its reader `bible` is missing. "
            "Install it with `apt-get install bible-kjv`."
        )
    out = subprocess.run([exe, "-p", str(data.parent), "-l0", "Gen1:1-Rev22:21"],
                         capture_output=True, check=True, timeout=120).stdout
    return _VERSE.sub(b"", out)  # verse numbers carry no language


def _stdlib(root: Path) -> Path:
    path = Path(sysconfig.get_paths()["stdlib"])
    return root / path.relative_to(path.anchor)


_TEST_DIRS = re.compile(r"(^|/)(tests?|idle_test|site-packages|dist-packages)(/|$)")


def _read_python(root: Path) -> bytes:
    folder = _stdlib(root)
    files = sorted(f for f in folder.rglob("*.py")
                   if not _TEST_DIRS.search(f.relative_to(folder).as_posix()))
    if not files:
        raise FileNotFoundError(
            f"text domain 'python': no *.py files in {str(folder)!r} (the interpreter's "
            "standard library; Debian: apt-get install libpython3-stdlib)"
        )
    return b"".join(f.read_bytes() for f in files)


#: domain name -> how to read and install it. The default domain order of the scenarios.
DOMAINS: dict[str, DomainInfo] = {
    "en": DomainInfo(_fortunes("en", "fortunes", "", frozenset({"art", "ascii-art",
                                                              "translate-me"})),
                     "fortunes", "English fortunes"),
    "de": DomainInfo(_fortunes("de", "fortunes-de", "de", frozenset({"asciiart"})),
                     "fortunes-de", "German fortunes"),
    "es": DomainInfo(_fortunes("es", "fortunes-es", "es", frozenset(), "*.fortunes"),
                     "fortunes-es", "Spanish fortunes"),
    "it": DomainInfo(_fortunes("it", "fortunes-it", "it", frozenset({"banner"})),
                     "fortunes-it", "Italian fortunes"),
    "kjv": DomainInfo(_read_kjv, "bible-kjv", "King James Bible"),
    "python": DomainInfo(_read_python, "python3", "Python standard library source"),
}


def read_domain(name: str, root: str | Path | None = None) -> bytes:
    """The raw bytes of domain ``name`` below ``root`` (default ``/``); a prepared
    ``<root>/swgl-text/<name>.txt`` wins over the system files."""
    if name not in DOMAINS:
        raise ValueError(f"domain must be one of {sorted(DOMAINS)}, got {name!r}")
    root = Path(root or "/")
    prepared = root / PREPARED / f"{name}.txt"
    if prepared.is_file():
        return prepared.read_bytes()
    return DOMAINS[name].read(root)


def _kept_chunks(name: str, data: bytes, max_bytes: int | None) -> np.ndarray:
    """``(n, CHUNK)`` uint8: the whole chunks of ``data``, evenly thinned to ``max_bytes``."""
    n_chunks = len(data) // CHUNK
    if n_chunks < 10:
        raise ValueError(f"domain {name!r} has {len(data)} bytes; at least {10 * CHUNK} needed "
                         "for one validation and one test chunk")
    chunks = np.frombuffer(data, dtype=np.uint8, count=n_chunks * CHUNK).reshape(n_chunks, CHUNK)
    if max_bytes is not None and n_chunks * CHUNK > max_bytes:
        n_keep = max(10, max_bytes // CHUNK)
        chunks = chunks[np.linspace(0, n_chunks - 1, n_keep).round().astype(np.int64)]
    return chunks


def split_bytes(name: str, data: bytes, max_bytes: int | None = None) -> TextSplits:
    """Cut ``data`` into chunks and deal them into train / val / test (see the module doc)."""
    chunks = _kept_chunks(name, data, max_bytes)
    slot = np.arange(len(chunks)) % 10
    take = {"train": slot < 8, "val": slot == 8, "test": slot == 9}
    as_tensor = {k: torch.from_numpy(chunks[v].reshape(-1).copy()) for k, v in take.items()}
    return TextSplits(name, as_tensor["train"], as_tensor["val"], as_tensor["test"])


def export(out_root: str | Path, root: str | Path | None = None,
           max_bytes: int | None = 4 << 20) -> list[Path]:
    """Write every domain's kept chunks to ``<out_root>/swgl-text/<domain>.txt``.

    Loading them (``data_dir=out_root``) with the same ``max_bytes`` gives the same splits.
    """
    folder = Path(out_root) / PREPARED
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in DOMAINS:
        path = folder / f"{name}.txt"
        path.write_bytes(_kept_chunks(name, read_domain(name, root), max_bytes).tobytes())
        written.append(path)
    return written


_CACHE: dict[tuple[str, str, int | None], TextSplits] = {}


def load_domain(name: str, root: str | Path | None = None,
                max_bytes: int | None = 4 << 20) -> TextSplits:
    """Domain ``name`` split into train / val / test (cached per process)."""
    key = (name, str(root or "/"), max_bytes)
    if key not in _CACHE:
        data = read_domain(name, root)
        log.info("text domain %s: %d bytes", name, len(data))
        _CACHE[key] = split_bytes(name, data, max_bytes)
    return _CACHE[key]

