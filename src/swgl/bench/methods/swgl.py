"""SWGL around any base optimizer, and SWGL + replay (the hybrid the seed recommends).

SWGL options come from the spec's ``swgl`` dict (``--swgl-opts`` on the command line) and go
straight to ``SWGL.wrap(base, **options)``, so new core options need no harness change.
"""

from __future__ import annotations

from torch import Tensor

from swgl import DEFAULT_RULE, RULES, SWGLWrapper
from swgl.bench.methods.base import Method, MethodSpec
from swgl.bench.methods.replay import Replay

__all__ = ["SPECS", "STRENGTH", "stability_tensors"]


def STRENGTH(options) -> dict[str, tuple[float, ...]]:  # noqa: N802 (a spec's ``tune``)
    """SWGL's strength for ``--tune`` under the spec's rule (``options``: its SWGL options):
    where the rule pulls toward the weights at a shift (v5 to v7; v6 the default), the pull's
    ``consolidation`` at a tenth, once and ten times its default (v6: 3e-5, 3e-4, 3e-3: two
    decades, as the peers' grids span; its damping is off by default, and turning it on costs
    the gain with Adam, docs/results.md); else the damping's ``lambda_reg`` at a third, once
    and ten thirds of the rule's default (v4's 3: 1, 3, 10, as measured; the seed's rules'
    0.01: 0.0033, 0.01, 0.033; v4's scale is 300 times theirs, where they train at chance)."""
    rule = RULES[options.get("rule", DEFAULT_RULE)]
    if "consolidation" in rule.options:
        name, factors = "consolidation", (0.1, 1, 10)
    else:
        name, factors = "lambda_reg", (1 / 3, 1, 10 / 3)
    default = dict(rule.defaults)[name]
    return {f"swgl.{name}": tuple(float(f"{default * k:.3g}") for k in factors)}


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
