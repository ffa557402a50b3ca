"""SWGL around any base optimizer, and SWGL + replay (the hybrid the seed recommends).

SWGL options come from the spec's ``swgl`` dict (``--swgl-opts`` on the command line) and go
straight to ``SWGL.wrap(base, **options)``, so new core options need no harness change.
"""

from __future__ import annotations

from torch import Tensor

from swgl import SWGLWrapper
from swgl.bench.methods.base import Method, MethodSpec
from swgl.bench.methods.replay import Replay

__all__ = ["SPECS", "STRENGTH", "stability_tensors"]

#: SWGL's strength for ``--tune``: the default rule's (v4) ``lambda_reg``, how strongly
#: importance bends a step (3 is the measured default).
STRENGTH = {"swgl.lambda_reg": (1.0, 3.0, 10.0)}

SPECS = (
    *(MethodSpec(f"swgl-{opt}", Method, opt, swgl={}, description=f"SWGL wrapping {opt}",
                 tune=STRENGTH) for opt in ("sgd", "sgd-momentum", "adam", "adamw")),
    MethodSpec("swgl-replay", Replay, "sgd", swgl={}, tune=STRENGTH,
               description="SWGL wrapping sgd, plus reservoir replay"),
)


def stability_tensors(method: Method) -> dict[str, Tensor]:
    """Each parameter's SWGL stability state, by parameter name ({} without SWGL)."""
    opt = method.optimizer
    if not isinstance(opt, SWGLWrapper):
        return {}
    out = {}
    for name, p in method.model.named_parameters():
        if "step" in opt.state.get(p, {}):  # any storage format: the fp32 view
            out[name] = opt.stability(p).detach().float()
    return out
