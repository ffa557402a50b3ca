r"""SGD (with momentum) with SWGL fused into the same pass: exactly
``SWGL.wrap(torch.optim.SGD(...))``, as :mod:`swgl.optim.adamw` is for AdamW.

With :math:`d` the gradient the rule hands on (see :mod:`swgl.optim.adamw`):

.. math::
    d \leftarrow d + \lambda w,\quad
    b \leftarrow \mu b + (1-\tau) d\ (b = d \text{ at the first step}),\quad
    u = d + \mu b \text{ (nesterov) or } b,\quad w' = w - \eta u

then :math:`w \leftarrow w'` (mode ``"grad"``) or :math:`w' + (1 - c)(w - w')` (``"update"``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from swgl._validate import check_range
from swgl.optim._base import SWGLOptimizer, TorchBase, plain_numbers

__all__ = ["SGD", "TORCH_SGD"]


def buffer_keys(group: dict[str, Any]) -> tuple[str, ...]:
    return ("momentum_buffer",) if group["momentum"] != 0.0 else ()


def kernel_args(group: dict[str, Any]) -> dict[str, Any]:
    """An SGD param group's hyperparameters as the kernels take them (swgl.optim's groups and
    ``torch.optim.SGD``'s use the same keys)."""
    return dict(lr=group["lr"], weight_decay=group["weight_decay"],
                momentum=group["momentum"], dampening=group["dampening"],
                nesterov=group["nesterov"])


def _torch_blocker(group: dict[str, Any]) -> str | None:
    """Why the kernels cannot stand in for ``torch.optim.SGD``'s step on ``group``. With
    momentum, torch's first step sets the buffer to the gradient, undamped: torch keeps no
    counter to tell that step by, so the kernels take a zero buffer for it, which is the same
    step only without dampening."""
    for name in ("maximize", "differentiable"):
        if group[name]:
            return f"{name}=True"
    if group["momentum"] != 0.0 and group["dampening"] != 0.0:
        return "dampening with momentum (torch's first step is undamped)"
    return plain_numbers(lr=group["lr"], momentum=group["momentum"],
                         dampening=group["dampening"], weight_decay=group["weight_decay"])


def _torch_state(p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
    """The momentum buffer ``torch.optim.SGD`` makes at a param's first step (a copy of the
    gradient there; zeros here, which the kernels' step turns into it: :func:`_torch_blocker`)."""
    if group["momentum"] == 0.0:
        return {}
    return {"momentum_buffer": torch.zeros_like(p, memory_format=torch.preserve_format)}


class SGD(SWGLOptimizer):
    """``torch.optim.SGD`` (no maximize) with SWGL in the same pass.

    Args:
        params: iterable of tensors or of param-group dicts (a group may carry ``swgl``).
        lr, momentum, dampening, weight_decay, nesterov: as in ``torch.optim.SGD``.
        swgl, fused, cuda_graphs: as in :class:`swgl.optim.AdamW`.

    State per param: ``step``, ``swgl_stability``, the rule's other state as ``swgl_<name>``
    and, with momentum, ``momentum_buffer``.
    """

    kernel_opt = 2

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False, *,
                 swgl: dict[str, Any] | None = None, fused: bool | None = None,
                 cuda_graphs: bool | None = None) -> None:
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov must be a bool, got {nesterov!r}")
        momentum = check_range("momentum", momentum, 0.0)
        dampening = check_range("dampening", dampening)
        if nesterov and (momentum <= 0.0 or dampening != 0.0):
            raise ValueError("nesterov=True requires momentum > 0 and dampening = 0")
        defaults = dict(lr=check_range("lr", lr, 0.0), momentum=momentum, dampening=dampening,
                        weight_decay=check_range("weight_decay", weight_decay, 0.0),
                        nesterov=nesterov)
        super().__init__(params, defaults, swgl, fused, cuda_graphs)

    def group_buffer_keys(self, group: dict[str, Any]) -> tuple[str, ...]:
        return buffer_keys(group)

    def kernel_args(self, group: dict[str, Any]) -> dict[str, Any]:
        return kernel_args(group)

    def _foreach_update(self, group, w, d, buffers, steps) -> None:
        lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
        if wd != 0.0:
            torch._foreach_add_(d, w, alpha=wd)
        u = d
        if mu != 0.0:
            (bufs,) = buffers
            # b = mu b + (1 - tau) d, or b = d at the first step (b is still 0 there): the
            # choice is made on the device, from the step counters
            first = steps == 1.0
            torch._foreach_mul_(bufs, list(torch.where(first, 0.0, mu).unbind()))
            scale = torch.where(first, 1.0, 1.0 - group["dampening"])
            torch._foreach_add_(bufs, torch._foreach_mul(d, list(scale.unbind())))
            if group["nesterov"]:
                torch._foreach_add_(d, bufs, alpha=mu)
            else:
                u = bufs
        torch._foreach_add_(w, u, alpha=-lr)


#: the fused step on ``torch.optim.SGD``'s own state (:class:`swgl.SWGLWrapper`); it keeps no
#: step counter
TORCH_SGD = TorchBase(opt=SGD.kernel_opt, buffer_keys=buffer_keys, kernel_args=kernel_args,
                      blocker=_torch_blocker, init_state=_torch_state, counter=None)
