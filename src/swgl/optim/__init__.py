"""Optimizers with SWGL fused into their step: one pass reads the gradient, the param, the
SWGL state and the optimizer state once (Triton on CUDA, foreach elsewhere).

``swgl.optim.AdamW(params, lr=1e-3, swgl=dict(rule="v2", mode="update"))`` is AdamW whose
update is modulated by SWGL; ``mode="grad"`` equals ``SWGL`` followed by ``torch.optim.AdamW``.
"""

from swgl.optim._base import MODES, SWGL_DEFAULTS
from swgl.optim.adamw import AdamW
from swgl.optim.sgd import SGD

__all__ = ["AdamW", "SGD", "MODES", "SWGL_DEFAULTS"]
