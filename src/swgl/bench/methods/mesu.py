r"""MESU (Bonnet et al. 2025, "Bayesian continual learning and forgetting in neural networks").

A Gaussian mean-field posterior per weight (``_gaussian.py``: mean ``mu``, standard deviation
``sigma``, gradients ``g`` and ``g_eps = g * eps`` averaged over weight samples) with a memory
window of ``N`` steps. With ``v = sigma^2`` and ``k = 1 / (N * sigma_p^2)``::

    mu    <- mu    + lr           * (-v * g     + k * v * (mu_p - mu))
    sigma <- sigma + lr_sigma / 2 * (-v * g_eps + k * sigma * (sigma_p^2 - v))

(``g`` and ``g_eps`` first clipped to ``+-clamp_grad / sigma`` when ``clamp_grad > 0``).
This is ``update_mesu`` of kellian-cottart/mesu-pmnist ``optimizers/mesu.py``, whose loss is
the *sum* over the batch of the per-sample negative log-likelihoods (``utils/trainFunctions.py``
``bayesian_loss_fn``). The step is ``lr * sigma^2``, and ``sigma`` shrinks where the loss is
curved (``E[g_eps] ~ sigma * h``), so weights that carry evidence move less: a per-parameter
step size from Bayes' rule. The prior terms pull ``(mu, sigma)`` back toward
``(mu_p, sigma_p)`` over about ``N`` steps (the reference's "number of batches for synaptic
memory"): old evidence fades, plasticity returns. ``N=inf`` keeps everything: the first-order
form of BGD (``bgd.py``).

``sigma`` starts at ``sigma_init`` for every weight (BGD's ``std_init`` default, 0.05; the
reference draws a layer-wise 2/sqrt(fan_in)) and ``mu`` at the model's initial weights. One
weight sample per step by default (the reference averages 10), the compute of the other
methods. State: ``mu`` and ``sigma``, 8 B/param in fp32.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import torch
from torch import Tensor

from swgl.bench.methods._checks import check_range
from swgl.bench.methods._gaussian import GaussianMeanField, SummedEvidence
from swgl.bench.methods.base import MethodSpec
from swgl.bench.methods.optim import OptimizerInfo

__all__ = ["MESU", "OPTIMIZERS", "SPECS"]


class MESU(GaussianMeanField):
    def __init__(self, params, lr: float = 1.0, lr_sigma: float = 1.0, sigma_init: float = 0.05,
                 sigma_prior: float = 0.2, mu_prior: float = 0.0, N: float = 1e5,
                 mc_samples: int = 1, clamp_grad: float = 0.0) -> None:
        defaults = dict(
            lr=check_range("lr", lr, 0.0),
            lr_sigma=check_range("lr_sigma", lr_sigma, 0.0),
            sigma_prior=check_range("sigma_prior", sigma_prior, 0.0, low_open=True),
            mu_prior=check_range("mu_prior", mu_prior),
            N=check_range("N", N, 0.0, low_open=True),
            clamp_grad=check_range("clamp_grad", clamp_grad, 0.0),
        )
        super().__init__(params, defaults, sigma_init, mc_samples)

    def _update(self, group, means, sigmas, g, ge) -> None:
        _mesu_update(means, sigmas, g, ge, lr=group["lr"], lr_sigma=group["lr_sigma"],
                     sigma_prior=group["sigma_prior"], mu_prior=group["mu_prior"],
                     N=group["N"], clamp_grad=group["clamp_grad"])


def _mesu_update(means: list[Tensor], sigmas: list[Tensor], g: list[Tensor], ge: list[Tensor],
                 *, lr: float, lr_sigma: float, sigma_prior: float, mu_prior: float, N: float,
                 clamp_grad: float) -> None:
    """The module docstring's update, in place on ``means`` and ``sigmas`` (not ``g``, ``ge``)."""
    if clamp_grad > 0:
        bound = torch._foreach_reciprocal(sigmas)
        torch._foreach_abs_(bound)
        torch._foreach_mul_(bound, clamp_grad)
        low = torch._foreach_neg(bound)
        # Out of place: ``g`` may be the parameters' own .grad tensors.
        g, ge = (torch._foreach_minimum(torch._foreach_maximum(x, low), bound) for x in (g, ge))
    k = 0.0 if math.isinf(N) else 1.0 / (N * sigma_prior ** 2)
    var = torch._foreach_mul(sigmas, sigmas)
    # mu step: v * (k * (mu_p - mu) - g)
    d_mu = torch._foreach_mul(means, -k)
    torch._foreach_add_(d_mu, k * mu_prior)
    torch._foreach_sub_(d_mu, g)
    torch._foreach_mul_(d_mu, var)
    # sigma step, from the old sigma as in the reference: k * sigma * (sigma_p^2 - v) - v * g_eps
    d_sigma = torch._foreach_mul(var, -k)
    torch._foreach_add_(d_sigma, k * sigma_prior ** 2)
    torch._foreach_mul_(d_sigma, sigmas)
    torch._foreach_addcmul_(d_sigma, var, ge, value=-1.0)
    torch._foreach_add_(means, d_mu, alpha=lr)
    torch._foreach_add_(sigmas, d_sigma, alpha=0.5 * lr_sigma)


class MESUEvidence(SummedEvidence):
    #: Searched by ``swgl bench --tune``: the step multiplier and the memory window (steps),
    #: around the pilot's best (lr 2, N 1e5 at sigma 0.02; docs/results.md).
    tune_grid = MappingProxyType({"lr": (1.0, 2.0, 4.0), "N": (1e4, 1e5, 1e6)})


OPTIMIZERS: dict[str, OptimizerInfo] = {"mesu": OptimizerInfo(MESU, 2.0)}

SPECS: tuple[MethodSpec, ...] = (
    # sigma_init 0.02 for stability (``_gaussian.py``); the prior at the same sigma, so that
    # forgetting returns a weight to its initial plasticity rather than to a 10x larger step.
    MethodSpec("mesu", MESUEvidence, "mesu", options={"sigma_init": 0.02, "sigma_prior": 0.02},
               description="MESU: Bayesian mean + sigma per weight, step ~ sigma^2, "
                           "memory window N"),
)
