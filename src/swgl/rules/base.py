"""What every rule module provides: its options (:class:`Hyper`), how a call sees its tensors
(:class:`Context`) and the rule's interface (:class:`Rule`).

A rule acts in up to two phases around the base optimizer's step:

* ``before(params, grads, state, steps, hp, ctx) -> aux``: on the gradients, before the base
  step (the seed's rules rescale them here). ``aux`` is a list with one entry per param of what
  ``after`` needs (v2/v3: a 0-d device tensor; v4: a ``(k, grad)`` pair), or None.
* ``after(params, snapshots, state, steps, aux, hp, ctx) -> None``: on the params, after the
  base step (``mode="update"`` rescales the update here; a proximal rule would pull the params
  toward an anchor here). ``snapshots`` are copies of the params taken just before the base
  step when the rule sets ``snapshot``, else None.

``state`` maps each name the rule declares in :attr:`Rule.state` to a list of fp32 working
tensors shaped like the params (the storage format of :mod:`swgl.state` loads and stores each
one), ``steps`` are per-param step counters (0-d device tensors, already counted for this
step). Each phase comes as :class:`Variants` with one signature: ``single`` (a readable
per-tensor reference), ``foreach`` (``torch._foreach_*``) and ``fused`` (Triton; None when the
rule has no kernel). A rule plugs in with one module and one entry in
:data:`swgl.rules.RULES`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class Hyper:
    """A param group's SWGL options, as the rules read them."""

    alpha: float
    lambda_reg: float
    eps: float
    max_boost: float
    signal: str = "relative"
    max_damping: float | None = None
    mode: str = "grad"
    shock: float = 0.0
    #: v5: the pull's strength per unit of consolidated importance (0: no pull)
    consolidation: float = 0.0
    #: v5: steps after a shift from which the pull fades as horizon / steps (0: it never fades)
    consolidation_horizon: float = 0.0

    @property
    def min_scale(self) -> float:
        return 1.0 / (self.max_boost if self.max_damping is None else self.max_damping)


def fp32(tensors: list[Tensor]) -> list[Tensor]:
    """``[t.float() for t in tensors]``, with no dispatch for the tensors already in fp32
    (``t.float()`` returns them as they are, at about a microsecond each on the hot path)."""
    return [t if t.dtype == torch.float32 else t.float() for t in tensors]


@functools.lru_cache(maxsize=64)
def cpu_scalar(value: float) -> Tensor:
    """``value`` as a 0-d fp32 CPU tensor, made once (only ever read: a foreach operand).
    On the CPU foreach ops turn a Python scalar into a tensor for each element, which took 2
    to 3 times the op itself (6 small tensors: an add 9 us against 17 to 29, a mul 23 against
    44); ``torch.tensor`` itself takes microseconds."""
    return torch.tensor(value, dtype=torch.float32)


def add_one_(tensors: list[Tensor]) -> None:
    """``x += 1`` for every tensor: on the CPU with :func:`cpu_scalar`, elsewhere with the
    Python scalar, which CUDA's foreach kernels take in one launch."""
    if tensors[0].device.type == "cpu":
        torch._foreach_add_(tensors, [cpu_scalar(1.0)] * len(tensors))
    else:
        torch._foreach_add_(tensors, 1.0)


def _local_sum(partial_sums: Tensor) -> Tensor:
    return partial_sums


@dataclass(frozen=True)
class Context:
    """How a call sees its tensors; the defaults describe plain, unscaled, unsharded tensors.

    ``reduce_sum`` completes a 1-D tensor of per-tensor partial sums into global sums (an
    all-reduce when the tensors are shards), and ``numels`` are the global element counts.
    ``found`` is a device flag (1.0 where some gradient of the step is non-finite, as torch's
    ``found_inf``): a rule that declares ``device_guard`` leaves its state and the grads as
    they were when it is set, without reading it on the host. None: the grads are finite.
    """

    grad_scale: float = 1.0
    reduce_sum: Callable[[Tensor], Tensor] = _local_sum
    numels: tuple[int, ...] | None = None
    found: Tensor | None = None
    #: set for a rule that declares ``fused_checks``: ``found`` is 0 and its fused variant
    #: sets it from the grads before anything reads it (its kernels check the tensors they
    #: take, ``check(grads)``, returning a flag like ``found``, the rest)
    check: Callable[[list[Tensor]], Tensor] | None = None
    #: an out-slot (v5 sets it for v4's ``before``): when a list, v4's ``before`` appends
    #: the group's sum of ``min((g / grad_scale)^2, R_MAX)`` over every element (a device
    #: 0-d, shards summed; on CUDA taken in its EMA pass): v5's detector reads it
    g2_sum: list[Tensor] | None = field(default=None, compare=False)
    #: on the CPU, what the rule's :attr:`Rule.host_guard` took from the grads when it found
    #: them all finite (v4: their squares and the squares' per-tensor sums), for its foreach
    #: variant to read instead of taking them again
    squares: tuple | None = field(default=None, compare=False)

    def with_g2_sum(self, g2_sum: list[Tensor]) -> Context:
        """This context with :attr:`g2_sum` set (``dataclasses.replace`` took about ten
        microseconds, a hot step's few percent on a small model)."""
        return Context(**{**self.__dict__, "g2_sum": g2_sum})

    def numel(self, i: int, t: Tensor) -> int:
        return t.numel() if self.numels is None else self.numels[i]

    @property
    def sharded(self) -> bool:
        return self.numels is not None or self.reduce_sum is not _local_sum

    def ok(self, device: torch.device) -> Tensor | None:
        """A 0-d bool on ``device``: True when the step applies; None when there is no flag."""
        return None if self.found is None else (self.found.reshape(()) == 0).to(device)


@dataclass(frozen=True)
class Variants:
    """One phase of a rule, three ways with one signature."""

    single: Callable[..., object]
    foreach: Callable[..., object]
    fused: Callable[..., object] | None = None


@dataclass(frozen=True)
class Rule:
    """A rule's interface (see the module docstring)."""

    name: str
    before: Variants
    #: the Hyper fields the rule reads; the classes reject any other option set for it
    options: frozenset[str]
    #: (name, initial value) of each per-param fp32 state tensor: a number, ``"param"`` for
    #: a copy of the param (an anchor), or a tuple for a small vector of per-group scalars
    #: (every param of the group holds a copy); the storage format applies to the first one
    state: tuple[tuple[str, float | str | tuple[float, ...]], ...] = (("stability", 1.0),)
    #: the state tensors that may hold negative values (a loaded checkpoint's other fills
    #: must not: they are importances, counters and EMAs of norms)
    signed_state: frozenset[str] = frozenset()
    after: Variants | None = None
    #: ``after`` needs the params as they were before the base step
    snapshot: bool = False
    #: the modes the rule runs in; the first is its default
    modes: tuple[str, ...] = ("grad",)
    #: the rule honours ``Context.found`` itself (no host sync for the non-finite guard)
    device_guard: bool = False
    #: ``(state, step, hp, group_mean) -> (stability as the rule reads it, factor c)`` for one
    #: tensor, ``group_mean`` the mean of the stored stability over the group's params (v4's
    #: reference; None: the tensor's own): what :mod:`swgl.stats` reports
    factor: Callable[..., tuple[Tensor, Tensor]] | None = field(default=None, compare=False)
    #: maps the user's options to the ones the variants read (v3: v2 with its ceiling at 1)
    hyper: Callable[[Hyper], Hyper] = field(default=lambda hp: hp, compare=False)
    #: the Triton kernels' rule id (rules sharing kernels share it), None without kernels
    kernel: str | None = None
    #: the ``fused`` variant also runs on the CPU (compiled: :mod:`swgl.kernels.compiled`)
    cpu_fused: bool = False
    #: the ``fused`` variant's before phase sets ``Context.found`` itself (``Context.check``)
    #: and reads no step counter (they are counted after it)
    fused_checks: bool = False
    #: the values ``alpha`` and ``lambda_reg`` take when the user leaves them unset (None):
    #: the seed's for the seed's rules, the measured ones for the default
    defaults: tuple[tuple[str, float], ...] = (("alpha", 0.99), ("lambda_reg", 0.01))
    #: for a rule whose kernel is another's (``kernel``) plus work of its own:
    #: ``(params, grads, state, hp, found, step, g2_sum) -> None`` runs that work around
    #: ``step()``, the kernel rule's fused optimizer step in swgl.optim, which returns its
    #: ``k``; ``g2_sum`` is as :attr:`Context.g2_sum` holds it, from the step's first pass
    around_fused_step: Callable[..., None] | None = field(default=None, compare=False)
    #: ``(grads, grad_scale) -> checked | None``: on the CPU, the foreach variant's own
    #: non-finite guard, from what its before phase reads of the grads anyway: ``checked``
    #: (handed to it as :attr:`Context.squares`) when that shows every grad finite, None
    #: when it cannot tell (the generic guard decides)
    host_guard: Callable[[list[Tensor], float], object] | None = field(default=None,
                                                                        compare=False)
    #: on CUDA the phases make no host sync and keep no host state between steps, so they may
    #: run as CUDA graphs (:mod:`swgl.graphs`)
    graphable: bool = False
    #: ``(params, state, hp, ctx) -> None``: what a task boundary the user names does
    #: (``on_task_boundary()``; v5 to v7: consolidate now, as at a detected shift); None: the
    #: state restarts from its initial values
    boundary: Callable[..., None] | None = field(default=None, compare=False)

    @property
    def init_value(self) -> float:
        return self.state[0][1]
