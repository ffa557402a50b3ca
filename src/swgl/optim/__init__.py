"""Optimizers with SWGL fused into their step: one pass reads the gradient, the param, the
SWGL state and the optimizer state once (Triton on CUDA, foreach elsewhere).

``swgl.optim.AdamW(params, lr=1e-3)`` computes what ``SWGL.wrap(torch.optim.AdamW(params,
lr=1e-3))`` does, with the same SWGL options, defaults (the default rule, ``v6``
(:data:`swgl.rules.DEFAULT_RULE`), in ``mode="update"``) and checks, passed as
``swgl=dict(...)``. Each param group holds its own ``swgl`` dict; one changed between steps
is checked again at the next step. ``stats()``, ``shifts()``, :func:`swgl.stats.layer_stats`
and the Lightning and HF stats callbacks read these optimizers as they read ``SWGL``'s.

``fused=True`` needs a CUDA device and Triton (RuntimeError when the optimizer is built
without them); ``fused=None``, the default, takes the Triton kernels where they run, else
the foreach path (on the CPU, for large params under v4 to v7, the compiled one).
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
