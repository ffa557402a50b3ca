r"""MESU (Bonnet et al. 2025, "Bayesian continual learning and forgetting in neural networks").

A Gaussian mean-field posterior per weight, mean ``mu`` and standard deviation ``sigma``,
updated from gradients at sampled weights, with a memory window of ``N`` steps. Each step draws
``mc_samples`` samples ``w = mu + sigma * eps`` (``eps ~ N(0, 1)``), runs the closure at each
and averages ``g = dL/dw`` (``= dL/dmu``) and ``g_eps = g * eps`` (``= dL/dsigma``). With
``v = sigma^2`` and ``k = 1 / (N * sigma_p^2)``::

    mu    <- mu    + lr           * (-v * g     + k * v * (mu_p - mu))
    sigma <- sigma + lr_sigma / 2 * (-v * g_eps + k * sigma * (sigma_p^2 - v))

(``g`` and ``g_eps`` first clipped to ``+-clamp_grad / sigma`` when ``clamp_grad > 0``).
This is ``update_mesu`` of kellian-cottart/mesu-pmnist ``optimizers/mesu.py``, whose loss is
the *sum* over the batch of the per-sample negative log-likelihoods (``utils/trainFunctions.py``
``bayesian_loss_fn``): each sample is one unit of evidence. The step is ``lr * sigma^2``, and
``sigma`` shrinks where the loss is curved (``E[g_eps] ~ sigma * h``), so weights that carry
evidence move less: a per-parameter step size from Bayes' rule. The prior terms pull
``(mu, sigma)`` back toward ``(mu_p, sigma_p)`` over about ``N`` steps (the reference's
"number of batches for synaptic memory"): old evidence fades, plasticity returns. ``N=inf``
keeps everything, the first-order form of BGD (Zeno et al., igolan/bgd
``optimizers_lib/bgd_optimizer.py``: ``mu -= eta sigma^2 E[g]``; its sigma update
``sigma sqrt(1 + (sigma E[g eps] / 2)^2) - sigma^2 E[g eps] / 2`` agrees to first order).

``sigma`` starts at ``sigma_init`` for every weight (BGD's ``std_init``; its default 0.05) and
``mu`` at the model's initial weights. Between steps the parameters hold ``mu`` (evaluation
uses the mean). State: ``mu`` and ``sigma``, 8 B/param in fp32; ``eps`` and the gradient sums
live only during a step.
"""

from __future__ import annotations

import math
from types import MappingProxyType

import torch
from torch import Tensor
from torch.optim import Optimizer

from swgl._validate import check_int, check_range
from swgl.bench.methods.base import Method, MethodSpec
from swgl.bench.methods.optim import OptimizerInfo

__all__ = ["MESU", "OPTIMIZERS", "SPECS", "SummedEvidence"]


class MESU(Optimizer):
    def __init__(self, params, lr: float = 1.0, lr_sigma: float = 1.0, sigma_init: float = 0.05,
                 sigma_prior: float = 0.2, mu_prior: float = 0.0, N: float = 1e5,
                 mc_samples: int = 1, clamp_grad: float = 0.0) -> None:
        defaults = dict(
            lr=check_range("lr", lr, 0.0),
            lr_sigma=check_range("lr_sigma", lr_sigma, 0.0),
            sigma_init=check_range("sigma_init", sigma_init, 0.0, low_open=True),
            sigma_prior=check_range("sigma_prior", sigma_prior, 0.0, low_open=True),
            mu_prior=check_range("mu_prior", mu_prior),
            N=check_range("N", N, 0.0, low_open=True),
            clamp_grad=check_range("clamp_grad", clamp_grad, 0.0),
        )
        # One closure serves every group, so the sample count is the optimizer's, not a group's.
        self.mc_samples = check_int("mc_samples", mc_samples, 1)
        super().__init__(params, defaults)

    def _lists(self, group) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        params, means, sigmas = [], [], []
        for p in group["params"]:
            state = self.state[p]
            if not state:
                state["mu"] = p.detach().clone()
                state["sigma"] = torch.full_like(p, group["sigma_init"],
                                                 memory_format=torch.preserve_format)
            params.append(p)
            means.append(state["mu"])
            sigmas.append(state["sigma"])
        return params, means, sigmas

    @torch.no_grad()
    def step(self, closure=None):
        """Sample, evaluate ``closure`` ``mc_samples`` times, update; returns the mean loss."""
        if closure is None:
            raise TypeError("MESU.step needs a closure (zero_grad, forward, backward, return "
                            "the loss): it samples the weights before each evaluation")
        groups = [self._lists(g) for g in self.param_groups]
        g_sum: list[list[Tensor]] = []
        ge_sum: list[list[Tensor]] = []
        loss = None
        for n in range(self.mc_samples):
            noises = []
            for params, means, sigmas in groups:
                eps = _standard_normal(params)
                torch._foreach_copy_(params, means)
                torch._foreach_addcmul_(params, sigmas, eps)
                noises.append(eps)
            with torch.enable_grad():
                value = closure()
            loss = value if loss is None else loss + value
            for i, ((params, _, _), eps) in enumerate(zip(groups, noises)):
                # A parameter the loss does not reach has a zero gradient: no evidence.
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
                if n == 0:
                    # One sample (the default) reads the gradients in place, without a copy.
                    g_sum.append(grads if self.mc_samples == 1 else torch._foreach_mul(grads, 1.0))
                    ge_sum.append(torch._foreach_mul(grads, eps))
                else:
                    torch._foreach_add_(g_sum[i], grads)
                    torch._foreach_addcmul_(ge_sum[i], grads, eps)
        for group, (params, means, sigmas), g, ge in zip(self.param_groups, groups, g_sum,
                                                         ge_sum):
            if self.mc_samples > 1:
                torch._foreach_div_(g, self.mc_samples)
                torch._foreach_div_(ge, self.mc_samples)
            _mesu_update(means, sigmas, g, ge, lr=group["lr"], lr_sigma=group["lr_sigma"],
                         sigma_prior=group["sigma_prior"], mu_prior=group["mu_prior"],
                         N=group["N"], clamp_grad=group["clamp_grad"])
            torch._foreach_copy_(params, means)
        return loss / self.mc_samples


def _standard_normal(params: list[Tensor]) -> list[Tensor]:
    """``randn_like`` for every tensor, drawn in one launch when they share device and dtype."""
    kinds = {(p.device, p.dtype) for p in params}
    if len(kinds) != 1:
        return [torch.randn_like(p) for p in params]
    device, dtype = kinds.pop()
    flat = torch.randn(sum(p.numel() for p in params), device=device, dtype=dtype)
    return [x.view_as(p) for x, p in zip(flat.split([p.numel() for p in params]), params)]


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


class SummedEvidence(Method):
    """Steps a closure optimizer (MESU) on the batch's *summed* loss: one sample, one unit of
    evidence, as the reference does. Uses no task boundaries."""

    #: Searched by ``swgl bench --tune``: the step multiplier and the memory window (steps).
    #: In the pilot (docs/results.md) lr 3 and N 1e3 diverged (sigma relaxes to sigma_prior).
    tune_grid = MappingProxyType({"lr": (0.5, 1.0, 2.0), "N": (3e3, 1e4, 1e5)})

    def observe(self, x, y, tids):
        def closure():
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.task_loss(x, y, tids) * len(x)
            loss.backward()
            return loss

        return (self.optimizer.step(closure) / len(x)).detach()


OPTIMIZERS: dict[str, OptimizerInfo] = {"mesu": OptimizerInfo(MESU, 1.0)}

SPECS: tuple[MethodSpec, ...] = (
    MethodSpec("mesu", SummedEvidence, "mesu",
               description="MESU: Bayesian mean + sigma per weight, step ~ sigma^2, "
                           "memory window N"),
)
