"""Per-sample gradient statistics (EWC's Fisher diagonal, MAS's importance) via torch.func."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
import torch.nn as nn
from torch import Tensor
from torch.func import functional_call, grad, vmap


def per_sample_mean(model: nn.Module, sample_loss: Callable[[Tensor, Tensor, Tensor], Tensor],
                    batches: Iterator[tuple[Tensor, Tensor, Tensor]], max_samples: int,
                    transform: Callable[[Tensor], Tensor],
                    masks: Tensor | None) -> dict[str, Tensor]:
    """Mean over up to ``max_samples`` samples of ``transform(per-sample gradient)``.

    ``sample_loss(out, y, mask)`` gets one sample's output row, label and additive logit mask
    (zeros without task-IL masks); the mask rows are gathered outside vmap.
    """
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss_one(p: dict[str, Tensor], x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        out = functional_call(model, p, (x.unsqueeze(0),))[0]
        return sample_loss(out, y, mask)

    per_sample = vmap(grad(loss_one), in_dims=(None, 0, 0, 0))
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    seen = 0
    for x, y, tids in batches:
        take = min(len(x), max_samples - seen)
        if take <= 0:
            break
        x, y, tids = x[:take], y[:take], tids[:take]
        rows = masks[tids] if masks is not None else x.new_zeros((take, 1))
        grads = per_sample(params, x, y, rows)
        for k, g in grads.items():
            total[k] += transform(g).sum(0)
        seen += take
    return {k: v / max(seen, 1) for k, v in total.items()}
