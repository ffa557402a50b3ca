"""Optimizers with SWGL fused into their step: one pass reads the gradient, the param, the
SWGL state and the optimizer state once (Triton on CUDA, foreach elsewhere).

``swgl.optim.AdamW(params, lr=1e-3)`` computes what ``SWGL.wrap(torch.optim.AdamW(params,
lr=1e-3))`` does, with the same SWGL options, defaults (the default rule, ``v5`` in
``mode="update"``) and checks, passed as ``swgl=dict(...)``.
"""

from swgl.optim._base import SWGL_DEFAULTS
from swgl.optim.adamw import AdamW
from swgl.optim.sgd import SGD
from swgl.options import MODES

__all__ = ["AdamW", "SGD", "MODES", "SWGL_DEFAULTS"]
