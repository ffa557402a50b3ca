r"""UPGD (Elsayed & Mahmood, ICLR 2024): utility-gated perturbed gradient descent.

First-order global variant, as in the paper's reference code::

    u  = beta_u * u + (1 - beta_u) * (-g * w)            # utility EMA
    s  = sigmoid((u / (1 - beta_u^t)) / max(u_hat))      # scaled utility in (0, 1)
    w  = (1 - lr * wd) * w - lr * (g + N(0, sigma^2)) * (1 - s)

Useful weights (s near 1) are protected; useless ones get the full step plus noise, which
keeps them plastic.
"""

from __future__ import annotations

from types import MappingProxyType

import torch
from torch.optim import Optimizer

from swgl.bench.methods._checks import check_range
from swgl.bench.methods.base import Method, MethodSpec
from swgl.bench.methods.optim import OptimizerInfo

__all__ = ["OPTIMIZERS", "SPECS", "UPGD"]


class UPGD(Optimizer):
    def __init__(self, params, lr: float = 0.01, weight_decay: float = 0.0,
                 beta_utility: float = 0.999, sigma: float = 0.001) -> None:
        check_range("lr", lr, 0.0)
        check_range("weight_decay", weight_decay, 0.0)
        check_range("beta_utility", beta_utility, 0.0, 1.0, high_open=True)
        check_range("sigma", sigma, 0.0)
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay,
                                      beta_utility=beta_utility, sigma=sigma))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        global_max = None
        for group in self.param_groups:
            beta = group["beta_utility"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["avg_utility"] = torch.zeros_like(p)
                state["step"] += 1
                state["avg_utility"].mul_(beta).add_(-p.grad * p, alpha=1 - beta)
                top = state["avg_utility"].max()
                global_max = top if global_max is None else torch.maximum(global_max, top)
        if global_max is None:
            return loss
        global_max = global_max.clamp(min=1e-30)  # all-negative utilities: keep the sign
        for group in self.param_groups:
            beta, lr = group["beta_utility"], group["lr"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                bias_correction = 1 - beta ** state["step"]
                noise = torch.randn_like(p.grad) * group["sigma"]
                scaled = torch.sigmoid(state["avg_utility"] / bias_correction / global_max)
                p.mul_(1 - lr * group["weight_decay"]).add_((p.grad + noise) * (1 - scaled),
                                                            alpha=-lr)
        return loss


#: UPGD is an SGD-family optimizer: compared with plain SGD at its tuned learning rate.
OPTIMIZERS = {"upgd": OptimizerInfo(UPGD, 0.05, MappingProxyType({}), lr_range=(3e-3, 3.0),
                                    baseline="naive-sgd")}
SPECS = (MethodSpec("upgd", Method, "upgd", description="utility-based perturbed gradient descent",
                    tune={"sigma": (1e-3, 1e-2, 1e-1)}),)
