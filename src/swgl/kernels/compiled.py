"""The CPU's fused path: a rule's own per-tensor formulas, compiled by ``torch.compile``.

On the CPU, a foreach op is one pass over memory per op and allocates its result, so the
default rule's foreach costs about thirty passes a step (10x AdamW on a 6M-param MLP,
docs/results.md). Inductor turns each per-tensor function of the rule (the ones its
``single`` variant runs eagerly: the formula is written once) into one C++ loop. Each
function is compiled once per process, with dynamic sizes: every tensor is passed flat and
every option as a 0-d tensor, so neither a new shape nor a new value of ``alpha`` recompiles.

Only tensors of :data:`MIN_NUMEL` elements or more take the compiled functions (a call costs
tens of microseconds of guards); the rest of the list takes the rule's foreach in the same call.
``fused=None`` picks this path for a CPU call when it holds :data:`AUTO_NUMEL` elements or more
in such tensors and a C++ compiler is installed; the first step then compiles for some seconds.
"""

from __future__ import annotations

import functools
import logging
import shutil
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from swgl.rules.base import cpu_scalar

__all__ = ["MIN_NUMEL", "AUTO_NUMEL", "available", "runs_on", "worth_it", "split", "compiled",
           "scalar", "flat", "failed"]

log = logging.getLogger(__name__)

#: elements from which a tensor takes the compiled functions (below: the foreach ops)
MIN_NUMEL = 1 << 16
#: elements (in tensors of MIN_NUMEL or more) from which ``fused=None`` compiles on the CPU:
#: about where the compiled step saves 10 ms, so the compile pays back within some hundreds of
#: steps
AUTO_NUMEL = 1 << 20
_PLAIN = (Tensor, torch.nn.Parameter)
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@functools.lru_cache(maxsize=1)
def available() -> bool:
    """True when ``torch.compile`` can build CPU kernels here (it needs a C++ compiler)."""
    import torch._dynamo

    return torch._dynamo.is_dynamo_supported() and any(
        shutil.which(cxx) for cxx in ("g++", "c++", "clang++"))


def runs_on(device: torch.device) -> bool:
    """True for the CPU, unless Triton's interpreter runs the Triton kernels there."""
    from swgl import kernels

    return device.type == "cpu" and not kernels.runs_on(device)


def _takes(*tensors: Tensor) -> bool:
    first = tensors[0]
    return first.numel() >= MIN_NUMEL and all(
        type(t) in _PLAIN and t.device.type == "cpu" and t.dtype in _DTYPES
        and t.is_contiguous() and t.shape == first.shape for t in tensors)


def split(*lists: Sequence[Tensor]) -> tuple[list[int], list[int]]:
    """(indices whose tensors take the compiled functions, the rest for foreach)."""
    big, rest = [], []
    for i, tensors in enumerate(zip(*lists)):
        (big if _takes(*tensors) else rest).append(i)
    return big, rest


def worth_it(params: Sequence[Tensor]) -> bool:
    """Whether ``fused=None`` compiles this CPU call."""
    # the size first: a small model (the common case of a per-step call) returns at once
    large = sum(n for n in map(Tensor.numel, params) if n >= MIN_NUMEL)
    return (large >= AUTO_NUMEL
            and all(type(p) in _PLAIN and p.device.type == "cpu" for p in params)
            and available())


#: set when a compile failed: every compiled function runs its eager formula from then on
_failed: list[str] = []


@functools.cache
def compiled(fn: Callable) -> Callable:
    """``fn`` compiled once per process (dynamic sizes, one graph).

    If the toolchain cannot build it (a broken compiler, missing headers), the step does not
    fail: a warning is logged once and ``fn`` itself, the same formula, runs eagerly. Nothing
    is written before a compile finishes, so the fallback is exact."""
    fast = torch.compile(fn, dynamic=True, fullgraph=True)

    def call(*args):
        if _failed:
            return fn(*args)
        try:
            return fast(*args)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: run the eager formula
            _failed.append(f"{fn.__qualname__}: {type(exc).__name__}: {exc}")
            log.warning("swgl: torch.compile failed (%s); SWGL's CPU step runs eagerly "
                        "(pass fused=False to skip compiling)", _failed[0][:500])
            return fn(*args)

    log.info("swgl: compiling %s for the CPU (once per process)", fn.__qualname__)
    return call


def failed() -> str | None:
    """Why compiling failed in this process, or None."""
    return _failed[0] if _failed else None


def scalar(value: float | Tensor) -> Tensor:
    """A 0-d fp32 CPU tensor: options enter the compiled functions as data, not constants
    (a number: :func:`swgl.rules.base.cpu_scalar`'s tensor, made once)."""
    if isinstance(value, Tensor):
        return value.reshape(()).float()
    return cpu_scalar(value)


def flat(t: Tensor) -> Tensor:
    """``t`` as a 1-D view: one compiled graph serves tensors of every rank."""
    return t.view(-1)
