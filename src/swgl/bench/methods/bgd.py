r"""BGD (Zeno et al., "Task-agnostic continual learning using online variational Bayes").

A Gaussian mean-field posterior per weight (``_gaussian.py``: mean ``mu``, standard deviation
``sigma``, gradients ``g`` and ``g_eps = g * eps`` averaged over weight samples), updated in
closed form, as in igolan/bgd ``optimizers_lib/bgd_optimizer.py`` (``step``)::

    mu    <- mu - lr * sigma^2 * g
    sigma <- sigma * sqrt(1 + (sigma * g_eps / 2)^2) - sigma^2 * g_eps / 2

with ``lr`` the reference's ``mean_eta``. The gradients are of the loss *summed* over the batch
(the reference multiplies torch's mean gradient by the batch size). ``sigma`` stays positive and
only shrinks with evidence (there is no forgetting term: MESU's ``N`` adds one), so the step
``lr * sigma^2`` of a weight that has mattered stays small for good.

``sigma`` starts at ``sigma_init`` (the reference's ``std_init``, default 0.05; its runs use
0.02-0.06). One weight sample per step by default (the reference uses 10), the compute of the
other methods. State: ``mu`` and ``sigma``, 8 B/param in fp32.
"""

from __future__ import annotations

from types import MappingProxyType

import torch

from swgl.bench.methods._checks import check_range
from swgl.bench.methods._gaussian import GaussianMeanField, SummedEvidence
from swgl.bench.methods.base import MethodSpec
from swgl.bench.methods.optim import OptimizerInfo

__all__ = ["BGD", "OPTIMIZERS", "SPECS"]


class BGD(GaussianMeanField):
    def __init__(self, params, lr: float = 1.0, sigma_init: float = 0.05,
                 mc_samples: int = 1) -> None:
        super().__init__(params, {"lr": check_range("lr", lr, 0.0)}, sigma_init, mc_samples)

    def _update(self, group, means, sigmas, g, ge) -> None:
        var = torch._foreach_mul(sigmas, sigmas)
        step = torch._foreach_mul(var, g)                    # g may be p.grad: not in place
        torch._foreach_add_(means, step, alpha=-group["lr"])
        half = torch._foreach_mul(sigmas, ge)
        torch._foreach_mul_(half, 0.5)                       # sigma * g_eps / 2
        root = torch._foreach_mul(half, half)
        torch._foreach_add_(root, 1.0)
        torch._foreach_sqrt_(root)
        torch._foreach_sub_(root, half)                      # sqrt(1 + a^2) - a
        torch._foreach_mul_(sigmas, root)


class BGDEvidence(SummedEvidence):
    #: Searched by ``swgl bench --tune``: the step multiplier and the initial sigma,
    #: around the pilot's best (lr 2 at sigma 0.02; 0.05 diverged; docs/results.md).
    tune_grid = MappingProxyType({"lr": (1.0, 2.0, 4.0), "sigma_init": (0.01, 0.02, 0.03)})


OPTIMIZERS: dict[str, OptimizerInfo] = {"bgd": OptimizerInfo(BGD, 2.0)}

SPECS: tuple[MethodSpec, ...] = (
    MethodSpec("bgd", BGDEvidence, "bgd", options={"sigma_init": 0.02},  # see _gaussian.py
               description="BGD: Bayesian mean + sigma per weight, step ~ sigma^2, no forgetting"),
)
