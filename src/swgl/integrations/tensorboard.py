"""Write SWGL statistics to TensorBoard: scalars per layer and stability histograms.

``log_stats(writer, optimizer, model, step)`` takes any object with ``add_scalar`` (and
``add_histogram`` when ``histograms=True``): ``torch.utils.tensorboard.SummaryWriter``, or the
``experiment`` of Lightning's ``TensorBoardLogger``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from swgl.stats import (
    DEFAULT_QUANTILES,
    LayerStats,
    Names,
    find_swgl,
    layer_stats,
    named_params,
    to_scalars,
)

__all__ = ["log_histograms", "log_stats"]


def log_stats(
    writer: Any,
    optimizer: Any,
    names: Names = None,
    step: int | None = None,
    *,
    quantiles: Iterable[float] = DEFAULT_QUANTILES,
    histograms: bool = False,
    prefix: str = "swgl",
) -> dict[str, LayerStats]:
    """Log :func:`swgl.stats.layer_stats` as ``<prefix>/<layer>/<metric>`` scalars; return them.

    With ``histograms=True`` it also calls :func:`log_histograms` (a device-to-host copy of the
    whole state: keep it infrequent on big models).
    """
    opt = find_swgl(optimizer)
    stats = layer_stats(opt, names, quantiles)
    for tag, value in to_scalars(stats, prefix).items():
        writer.add_scalar(tag, value, step)
    if histograms:
        log_histograms(writer, opt, names, step, prefix=prefix)
    return stats


def log_histograms(
    writer: Any, optimizer: Any, names: Names = None, step: int | None = None, *,
    prefix: str = "swgl",
) -> None:
    """Each stepped param's stored stability as a ``<prefix>/<layer>/stability`` histogram."""
    opt = find_swgl(optimizer)
    for name, p in named_params(opt, names).items():
        state = opt.state.get(p)
        if state and "step" in state:
            stability = opt.stability(p).detach().float().cpu()
            writer.add_histogram(f"{prefix}/{name}/stability", stability, step)
