"""Hugging Face ``transformers.Trainer``: SWGL as its optimizer, and its statistics in its logs.

Either form works, and resume from a checkpoint restores SWGL's state (the wrapper's
``state_dict()`` holds only tensors and Python scalars, so the Trainer's
``torch.load(weights_only=True)`` accepts it):

* ``Trainer(..., optimizers=(SWGL.wrap(base), scheduler))``;
* ``Trainer(..., optimizer_cls_and_kwargs=optimizer_cls_and_kwargs(args, alpha=0.99))``: SWGL
  around the optimizer ``args.optim`` names, with its learning rate, betas and weight decay.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from swgl._validate import check_int
from swgl.rules import DEFAULT_RULE, RULES
from swgl.stats import DEFAULT_QUANTILES, layer_stats, to_scalars
from swgl.wrapper import SWGLWrapper

__all__ = ["SWGLStatsCallback", "add_stats_logging", "optimizer_cls_and_kwargs"]


def optimizer_cls_and_kwargs(
    args: TrainingArguments, model: torch.nn.Module | None = None, **swgl_options: Any
) -> tuple[type[SWGLWrapper], dict[str, Any]]:
    """``(SWGLWrapper, kwargs)`` wrapping the optimizer the Trainer would build from ``args``.

    ``swgl_options`` are :class:`~swgl.SWGLWrapper`'s (``alpha``, ``max_boost``, ``rule``...).
    Warns when ``args`` clips gradients under a rule with a shift detector (v5 to v7; v6 the
    default): a clipped gradient's norm sits at the cap, so the detector, which reads that
    norm, misses shifts (measured: none found at a domain switch with the Trainer's default
    ``max_grad_norm=1.0``, README "Integrations").
    """
    rule = RULES.get(swgl_options.get("rule", DEFAULT_RULE))
    if rule is not None and "detector" in dict(rule.state) and (args.max_grad_norm or 0) > 0:
        warnings.warn(
            f"args.max_grad_norm={args.max_grad_norm} clips the gradients SWGL's shift detector "
            f"reads (rule {rule.name!r}): a clipped norm sits at the cap and a shift may go "
            "unseen; set max_grad_norm=0 (or a larger value), or call "
            "optimizer.on_task_boundary() where the data changes", UserWarning, stacklevel=2)
    base, base_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    if not (isinstance(base, type) and issubclass(base, torch.optim.Optimizer)):
        raise ValueError(
            f"args.optim={args.optim!r} builds {base!r}, not a torch.optim.Optimizer subclass; "
            "pass optimizers=(SWGL.wrap(base), scheduler) instead"
        )
    return SWGLWrapper, {"base": base, "base_kwargs": dict(base_kwargs), **swgl_options}


class SWGLStatsCallback(TrainerCallback):
    """Send :func:`swgl.stats.layer_stats` to ``log`` every ``every_n_steps`` optimizer steps.

    ``log`` receives ``{"swgl/<layer>/<metric>": value}``; pass ``trainer.log`` (what
    :func:`add_stats_logging` does) so the values reach every ``report_to`` integration and
    ``trainer.state.log_history``. ``every_n_steps=None`` follows the Trainer's ``logging_steps``.
    """

    def __init__(
        self,
        log: Callable[[dict[str, float]], Any],
        every_n_steps: int | None = None,
        *,
        quantiles: Iterable[float] = DEFAULT_QUANTILES,
        prefix: str = "swgl",
    ) -> None:
        if not callable(log):
            raise TypeError(f"log must be callable, got {type(log).__name__}")
        if every_n_steps is not None:
            check_int("every_n_steps", every_n_steps, low=1)
        self.log = log
        self.every_n_steps = every_n_steps
        self.quantiles = tuple(quantiles)
        self.prefix = prefix

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        every = self.every_n_steps or state.logging_steps  # the Trainer resolved ratios here
        if every and state.global_step % every == 0:
            stats = layer_stats(optimizer, model, self.quantiles)
            self.log(to_scalars(stats, self.prefix))
        return control


def add_stats_logging(trainer: Trainer, every_n_steps: int | None = None,
                      **options: Any) -> SWGLStatsCallback:
    """Add a :class:`SWGLStatsCallback` that logs through ``trainer.log``; return it."""
    callback = SWGLStatsCallback(trainer.log, every_n_steps, **options)
    trainer.add_callback(callback)
    return callback
