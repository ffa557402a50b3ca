r"""Mean-field Gaussian weights, shared by the Bayesian peers (``mesu.py``, ``bgd.py``).

Each weight has a mean ``mu`` and a standard deviation ``sigma``. A step draws ``mc_samples``
samples ``w = mu + sigma * eps`` (``eps ~ N(0, 1)``), runs the closure at each and averages::

    g     = dL/dw          (= dL/dmu)
    g_eps = dL/dw * eps    (= dL/dsigma)

then hands ``(mu, sigma, g, g_eps)`` to the subclass's ``_update``. Between steps the
parameters hold ``mu`` (evaluation uses the mean). ``L`` is the *sum* over the batch of the
per-sample losses in both references (each sample is one unit of evidence); the
:class:`SummedEvidence` strategy builds that closure. State: ``mu`` and ``sigma``, 8 B/param in
fp32; ``eps`` and the gradient sums live only during a step.

Stability: with one sample per step, ``g_eps`` is noise of size ``|g|`` around its mean
``sigma * h``, so ``sigma`` takes a random walk of relative size about ``sigma * |g|`` per step
and, where it drifts up, the step ``lr * sigma^2 * g`` runs away. On Permuted Fashion-MNIST
(batch 32, summed loss) ``sigma_init=0.05`` diverged within two tasks for both rules; 0.02 with
a larger ``lr`` (the same first step) was stable, as were 4 samples or MESU's ``clamp_grad``.
The registered specs therefore start at ``sigma_init=0.02``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from swgl.bench.methods._checks import check_int, check_range
from swgl.bench.methods.base import Method

__all__ = ["GaussianMeanField", "SummedEvidence"]


class GaussianMeanField(Optimizer):
    """The sampling step; subclasses implement ``_update`` (in place on ``means``, ``sigmas``)."""

    def __init__(self, params, defaults: Mapping[str, Any], sigma_init: float,
                 mc_samples: int) -> None:
        defaults = {**defaults,
                    "sigma_init": check_range("sigma_init", sigma_init, 0.0, low_open=True)}
        # One closure serves every group, so the sample count is the optimizer's, not a group's.
        self.mc_samples = check_int("mc_samples", mc_samples, 1)
        super().__init__(params, defaults)

    def _update(self, group: Mapping[str, Any], means: list[Tensor], sigmas: list[Tensor],
                g: list[Tensor], ge: list[Tensor]) -> None:
        raise NotImplementedError

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
            raise TypeError(f"{type(self).__name__}.step needs a closure (zero_grad, forward, "
                            "backward, return the loss): it samples the weights before each "
                            "evaluation")
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
            self._update(group, means, sigmas, g, ge)
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


class SummedEvidence(Method):
    """Steps a closure optimizer on the batch's *summed* loss: one sample, one unit of
    evidence, as the Bayesian references do. Uses no task boundaries."""

    def observe(self, x, y, tids):
        def closure():
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.task_loss(x, y, tids) * len(x)
            loss.backward()
            return loss

        return (self.optimizer.step(closure) / len(x)).detach()
