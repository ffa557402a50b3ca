"""Optimizers with SWGL fused into their step: one pass reads the gradient, the param, the
SWGL state and the optimizer state once (Triton on CUDA, foreach elsewhere).

``swgl.optim.AdamW(params, lr=1e-3)`` computes what ``SWGL.wrap(torch.optim.AdamW(params,
lr=1e-3))`` does, with the same SWGL options, defaults (the default rule, ``v5`` in
``mode="update"``) and checks, passed as ``swgl=dict(...)``.
"""

import torch

from swgl.optim._base import SWGL_DEFAULTS, TorchBase
from swgl.optim.adamw import TORCH_ADAMW, AdamW
from swgl.optim.sgd import SGD, TORCH_SGD
from swgl.options import MODES

__all__ = ["AdamW", "SGD", "MODES", "SWGL_DEFAULTS", "TORCH_BASES"]

#: the torch optimizers (these classes exactly, not subclasses) whose step the fused kernels
#: implement on their own state: :class:`swgl.SWGLWrapper` steps them so
TORCH_BASES: dict[type, TorchBase] = {torch.optim.AdamW: TORCH_ADAMW, torch.optim.SGD: TORCH_SGD}
