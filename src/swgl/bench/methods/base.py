"""The strategy base class, the method spec and the per-method option handling.

The quadratic regularizers (EWC, online EWC, SI, MAS) use Adam, as in van de Ven & Tolias 2019:
with SGD (lr 0.1) every penalty strong enough to matter diverged on Fashion-MNIST (see
docs/results.md).

A *method* is a :class:`MethodSpec`: a strategy class (how the loss and the hooks work), a
base optimizer, whether SWGL wraps it, and option overrides. Variants are new specs, not new
code: ``BenchConfig(variants={"swgl-v1": {"base": "swgl-sgd", "swgl.rule": "v1"}})``.

Nothing here keeps global state: the method table is built explicitly in
``swgl.bench.methods`` from each method module's ``SPECS``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from swgl.bench.methods.optim import OptimizerInfo, build_optimizer

__all__ = ["Batches", "Context", "Method", "MethodSpec", "build_method"]

Batches = Callable[[], Iterator[tuple[Tensor, Tensor, Tensor]]]


@dataclass(frozen=True)
class Context:
    """What a strategy may know about the scenario (never the test data)."""

    n_outputs: int
    batch_size: int
    masks: Tensor | None = None                 # (T, n_outputs) additive task-IL logit masks
    task_classes: list[Tensor] | None = None    # per task; None in streams (no known tasks)


class Method:
    """Plain fine-tuning; subclasses override the hooks they need.

    ``hparams`` lists the strategy's options and their defaults; they become attributes.
    """

    hparams: ClassVar[Mapping[str, Any]] = MappingProxyType({})

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, ctx: Context,
                 options: Mapping[str, Any]) -> None:
        unknown = set(options) - set(self.hparams)
        if unknown:
            raise ValueError(
                f"{type(self).__name__} got unknown options {sorted(unknown)}; valid: "
                f"{sorted(self.hparams)}"
            )
        self.model, self.optimizer, self.ctx = model, optimizer, ctx
        for key, value in {**self.hparams, **options}.items():
            setattr(self, key, value)

    # -- losses -------------------------------------------------------------------------------

    def logits(self, x: Tensor, tids: Tensor, model: nn.Module | None = None) -> Tensor:
        out = (model or self.model)(x)
        return out if self.ctx.masks is None else out + self.ctx.masks[tids]

    def task_loss(self, x: Tensor, y: Tensor, tids: Tensor) -> Tensor:
        return F.cross_entropy(self.logits(x, tids), y)

    def penalty(self) -> Tensor | float:
        return 0.0

    # -- hooks --------------------------------------------------------------------------------

    def observe(self, x: Tensor, y: Tensor, tids: Tensor) -> Tensor:
        """One training step on a batch; returns the detached loss."""
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.task_loss(x, y, tids) + self.penalty()
        loss.backward()
        self.before_step()
        self.optimizer.step()
        self.after_step(x, y, tids)
        return loss.detach()

    def before_step(self) -> None:
        """After backward, before the optimizer step (grads are raw, not yet modulated)."""

    def after_step(self, x: Tensor, y: Tensor, tids: Tensor) -> None:
        """After the optimizer step."""

    def begin_task(self, t: int) -> None:
        """Called before task ``t`` (in streams: at each pseudo-boundary)."""

    def end_task(self, t: int, batches: Batches) -> None:
        """Called after task ``t``; ``batches()`` iterates over that task's training data."""

    def state_tensors(self) -> Iterable[Tensor]:
        """Persistent tensors the strategy keeps beyond the model (for state bytes/param)."""
        return ()


@dataclass(frozen=True)
class MethodSpec:
    """A method: strategy + optimizer (+ SWGL) + option overrides + its tuning grid.

    ``tune`` maps the method's strength option(s) to the values ``swgl bench --tune`` tries
    (the learning rate is tuned for every method; see :mod:`swgl.bench.tuning`). Empty: the
    strategy's ``tune_grid`` class attribute, else the optimizer's ``OptimizerInfo.tune_grid``,
    else only the learning rate. A callable ``tune`` is given the spec's SWGL options and
    returns that mapping (SWGL's strength depends on its rule).
    """

    name: str
    strategy: type[Method]
    optimizer: str = "sgd"
    swgl: Mapping[str, Any] | None = None   # None: no SWGL; a dict: SWGL.wrap(base, **swgl)
    options: Mapping[str, Any] = field(default_factory=dict)  # lr, hparams, optimizer kwargs
    description: str = ""
    tune: (Mapping[str, tuple[Any, ...]]
           | Callable[[Mapping[str, Any]], Mapping[str, tuple[Any, ...]]]) = field(
        default_factory=dict)

    def strength_grid(self, info: OptimizerInfo) -> dict[str, tuple[Any, ...]]:
        """Option -> values tuned besides the learning rate (their product is the grid)."""
        tune = self.tune(self.swgl or {}) if callable(self.tune) else self.tune
        return dict(tune or getattr(self.strategy, "tune_grid", None) or info.tune_grid)

    def valid_options(self, info: OptimizerInfo) -> list[str]:
        """Options this spec accepts, given its optimizer's ``info``."""
        opt_keys = [k for k in inspect.signature(info.cls).parameters if k not in ("params", "lr")]
        return sorted({"lr", *self.strategy.hparams, *opt_keys})

    def with_options(self, overrides: Mapping[str, Any], info: OptimizerInfo) -> MethodSpec:
        """A copy with ``overrides`` applied; keys ``swgl.X`` set SWGL option X."""
        options, swgl = dict(self.options), None if self.swgl is None else dict(self.swgl)
        valid = self.valid_options(info)
        for key, value in overrides.items():
            if key.startswith("swgl."):
                if swgl is None:
                    raise ValueError(f"method {self.name!r} does not use SWGL; got option {key!r}")
                swgl[key[5:]] = value
            elif key in valid:
                options[key] = value
            else:
                raise ValueError(
                    f"unknown option {key!r} for method {self.name!r}; valid: {valid} "
                    "(or swgl.<option> for SWGL methods)"
                )
        return replace(self, options=options, swgl=swgl)


def build_method(spec: MethodSpec, info: OptimizerInfo, model: nn.Module, ctx: Context) -> Method:
    """Build the optimizer ``info`` describes (SWGL-wrapped if asked) and the strategy."""
    opts = dict(spec.options)
    hp = {k: opts.pop(k) for k in list(opts) if k in spec.strategy.hparams}
    lr = opts.pop("lr", info.lr)
    optimizer = build_optimizer(info, model.parameters(), lr, opts, spec.swgl)
    return spec.strategy(model, optimizer, ctx, hp)
