r"""AdamW with SWGL fused into the same pass: ``swgl.optim.AdamW(params, lr, ...)`` computes
what ``SWGL.wrap(torch.optim.AdamW(params, lr, ...))`` does (to rounding: about an ulp a
step, as its own AdamW arithmetic is written in another order), in one pass over the
gradient, the param, SWGL's state and Adam's moments (Triton on CUDA, foreach elsewhere;
``v4`` takes three passes, for its sums over the param group, and ``v5`` and the default
``v6`` those three, a pull, and a consolidation at detected shifts).

With :math:`d` the gradient the rule hands on (mode ``"grad"``: :math:`c \odot g + k \odot w`,
``v4``: :math:`\rho c \odot g`; mode ``"update"``: :math:`g + k \odot w`, ``v4``: :math:`g`)
and step :math:`t`:

.. math::
    m \leftarrow \beta_1 m + (1-\beta_1) d,\quad v \leftarrow \beta_2 v + (1-\beta_2) d^2,\quad
    u = \frac{m / (1-\beta_1^t)}{\sqrt{v / (1-\beta_2^t)} + \epsilon},\quad
    w' = w (1 - \eta\lambda) - \eta u

then :math:`w \leftarrow w'` (mode ``"grad"``) or :math:`w \leftarrow w' + (1 - c)(w - w')`
(mode ``"update"``: the rule's ``after`` phase scales the whole step by :math:`c`; ``v4``:
:math:`w \leftarrow w + \rho c (w' - w)`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.optim.optimizer import _get_scalar_dtype

from swgl._validate import check_range
from swgl.optim._base import SWGLOptimizer, TorchBase, bias_correction, plain_numbers

__all__ = ["AdamW", "TORCH_ADAMW"]


def kernel_args(group: dict[str, Any]) -> dict[str, Any]:
    """An AdamW param group's hyperparameters as the kernels take them (swgl.optim's groups
    and ``torch.optim.AdamW``'s use the same keys)."""
    beta1, beta2 = group["betas"]
    return dict(lr=group["lr"], beta1=beta1, beta2=beta2, opt_eps=group["eps"],
                weight_decay=group["weight_decay"])


def _torch_blocker(group: dict[str, Any]) -> str | None:
    """Why the kernels cannot stand in for ``torch.optim.AdamW``'s step on ``group``: an
    option they do not implement, or step counters on the host (torch keeps them there unless
    ``fused`` or ``capturable``; counting a skipped step there would wait for the device)."""
    for name in ("amsgrad", "maximize", "differentiable"):
        if group[name]:
            return f"{name}=True"
    if not group.get("decoupled_weight_decay", True):   # (torch < 2.7's AdamW has no such key)
        return "decoupled_weight_decay=False"
    if not (group["fused"] or group["capturable"]):
        return "its step counters live on the host (fused=True or capturable=True)"
    beta1, beta2 = group["betas"]
    return plain_numbers(lr=group["lr"], beta1=beta1, beta2=beta2, eps=group["eps"],
                         weight_decay=group["weight_decay"])


def _torch_state(p: Tensor, group: dict[str, Any]) -> dict[str, Tensor]:
    """What ``torch.optim.AdamW`` makes at a param's first step (``Adam._init_group``), for the
    groups :func:`_torch_blocker` lets through: the counter on the param's device."""
    return {
        "step": torch.zeros((), dtype=_get_scalar_dtype(is_fused=group["fused"]),
                            device=p.device),
        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
    }


class AdamW(SWGLOptimizer):
    """``torch.optim.AdamW`` (no amsgrad, no maximize) with SWGL in the same pass.

    Args:
        params: iterable of real floating-point tensors or of param-group dicts; a group may
            carry its own ``swgl`` dict, merged over the constructor's. Each group gets its
            own copy: ``param_groups[i]["swgl"][name] = value`` changes group ``i`` only, and
            is validated at the next step.
        lr, betas, eps, weight_decay: as in ``torch.optim.AdamW``.
        swgl: SWGL's options (:class:`swgl.SWGL`'s, with its defaults and checks): ``rule``,
            ``alpha``, ``lambda_reg``, ``eps``, ``max_boost``, ``signal``, ``mode``,
            ``max_damping``, ``shock``, ``consolidation``, ``consolidation_horizon``.
        fused: None picks the Triton kernels when every param is a contiguous CUDA tensor and
            Triton is installed, else foreach; True requires a CUDA device and Triton
            (RuntimeError at construction without them) and the kernels at each step; False
            never uses them.
        cuda_graphs: replay the Triton step as a CUDA graph (:mod:`swgl.graphs`; v4 to v7):
            None (default) where possible, True required (ValueError where it cannot), False
            never. While on, the grads are copied into kept buffers (one param-sized buffer).

    State per param: ``step``, ``exp_avg``, ``exp_avg_sq`` (fp32), ``swgl_stability`` and the
    rule's other state as ``swgl_<name>`` (v6: ``swgl_anchor``, ``swgl_detector``...).
    :meth:`stats` and :meth:`shifts` read it as :class:`swgl.SWGL`'s do. Gradients are read,
    never modified. A non-finite gradient skips the whole step.
    """

    buffer_keys = ("exp_avg", "exp_avg_sq")
    kernel_opt = 1

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, *,
                 swgl: dict[str, Any] | None = None, fused: bool | None = None,
                 cuda_graphs: bool | None = None) -> None:
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair of floats, got {betas!r}")
        defaults = dict(
            lr=check_range("lr", lr, 0.0),
            betas=(check_range("betas[0]", betas[0], 0.0, 1.0, high_open=True),
                   check_range("betas[1]", betas[1], 0.0, 1.0, high_open=True)),
            eps=check_range("eps", eps, 0.0),
            weight_decay=check_range("weight_decay", weight_decay, 0.0),
        )
        super().__init__(params, defaults, swgl, fused, cuda_graphs)

    def kernel_args(self, group: dict[str, Any]) -> dict[str, Any]:
        return kernel_args(group)

    def _foreach_update(self, group, w, d, buffers, steps) -> None:
        lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
        beta1, beta2 = group["betas"]
        exp_avgs, exp_avg_sqs = buffers
        torch._foreach_lerp_(exp_avgs, d, 1.0 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, d, d, value=1.0 - beta2)
        denom = torch._foreach_sqrt(exp_avg_sqs)
        torch._foreach_div_(denom, list(bias_correction(steps, beta2).sqrt().float().unbind()))
        torch._foreach_add_(denom, eps)
        u = torch._foreach_div(exp_avgs, denom)
        torch._foreach_div_(u, list(bias_correction(steps, beta1).float().unbind()))
        torch._foreach_mul_(w, 1.0 - lr * wd)
        torch._foreach_add_(w, u, alpha=-lr)


#: the fused step on ``torch.optim.AdamW``'s own state (:class:`swgl.SWGLWrapper`)
TORCH_ADAMW = TorchBase(opt=AdamW.kernel_opt, buffer_keys=lambda group: AdamW.buffer_keys,
                        kernel_args=kernel_args, blocker=_torch_blocker, init_state=_torch_state,
                        counter="step")
