"""Lightning: a callback that logs SWGL's statistics to the trainer's loggers.

The optimizer itself needs no adapter: return ``SWGL.wrap(base)`` (alone, in a list, or in a
dict with an ``lr_scheduler``) from ``configure_optimizers``. Lightning calls
``optimizer.step(closure=...)``, which runs the closure, modulates and steps the base; with
``precision="16-mixed"`` it unscales the grads before ``step()``, and skips ``step()`` on
overflow, so SWGL only sees finite, unscaled gradients. ``Trainer`` checkpoints hold the
wrapper's ``state_dict()``, so a resumed fit continues with SWGL's state.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger

from swgl._validate import check_int
from swgl.integrations.tensorboard import log_histograms
from swgl.stats import DEFAULT_QUANTILES, find_swgl, layer_stats, to_scalars

__all__ = ["SWGLStatsCallback"]


class SWGLStatsCallback(pl.Callback):
    """Log :func:`swgl.stats.layer_stats` to every logger every ``every_n_steps`` steps.

    Metrics are named ``<prefix>/<layer>/<metric>`` (``prefix`` gets the optimizer's index
    appended when ``configure_optimizers`` returns several SWGL optimizers). With
    ``histograms=True``, a ``TensorBoardLogger`` also gets each layer's stability histogram.
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        *,
        quantiles: Iterable[float] = DEFAULT_QUANTILES,
        histograms: bool = False,
        prefix: str = "swgl",
    ) -> None:
        self.every_n_steps = check_int("every_n_steps", every_n_steps, low=1)
        self.quantiles = tuple(quantiles)
        self.histograms = histograms
        self.prefix = prefix
        self._last_step = -1

    @staticmethod
    def _swgl_optimizers(trainer: pl.Trainer) -> list[tuple[int, Any]]:
        found = []
        for i, opt in enumerate(trainer.optimizers):
            try:
                found.append((i, find_swgl(opt)))
            except TypeError:
                continue  # another optimizer of a multi-optimizer module
        return found

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._swgl_optimizers(trainer):
            kinds = [type(opt).__name__ for opt in trainer.optimizers]
            raise ValueError(
                f"SWGLStatsCallback needs an SWGL optimizer from configure_optimizers, got {kinds}"
            )
        self._last_step = -1

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:
        step = trainer.global_step
        if step == self._last_step or step % self.every_n_steps:
            return  # gradient accumulation: several batches share a global step
        self._last_step = step
        optimizers = self._swgl_optimizers(trainer)
        for i, opt in optimizers:
            prefix = self.prefix if len(optimizers) == 1 else f"{self.prefix}{i}"
            stats = layer_stats(opt, pl_module, self.quantiles)
            scalars = to_scalars(stats, prefix)
            for logger in trainer.loggers:
                logger.log_metrics(scalars, step=step)
            if self.histograms:
                for logger in trainer.loggers:
                    if isinstance(logger, TensorBoardLogger):
                        log_histograms(logger.experiment, opt, pl_module, step, prefix=prefix)
