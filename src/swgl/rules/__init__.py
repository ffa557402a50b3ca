"""The SWGL rules: one module per rule family, filled into one registry here, explicitly.

* :mod:`swgl.rules.seed`: ``v1``, ``v1-paper`` (the seed's, bit-exact);
* :mod:`swgl.rules.normalised`: ``v2``, ``v3`` (the default until issue 12);
* :mod:`swgl.rules.importance`: ``v4`` (importance damping with the progress rescale; the
  default until the sixth session);
* :mod:`swgl.rules.consolidation`: ``v5`` (v4 plus a pull toward the weights at detected
  distribution shifts; the default until the twelfth session);
* :mod:`swgl.rules.synaptic`: ``v6`` (the default: v5's detector and pull with SI's
  path-integral importance, no damping; chosen against the plain optimizer at its tuned
  learning rate, with v5 beside it in the same run, docs/results.md), and ``v7`` (opt-in:
  v6 with each shift's importance divided by the length of the segment it was learned in).

Each module holds its formula (docstring) and its ``single`` / ``foreach`` / ``fused``
variants; :mod:`swgl.rules.base` describes the interface a new rule implements, and
:func:`swgl.functional.swgl` / :func:`swgl.functional.swgl_after` dispatch to them.
"""

from swgl.rules import consolidation, importance, normalised, seed, synaptic
from swgl.rules.base import Context, Hyper, Rule, Variants

__all__ = ["RULES", "DEFAULT_RULE", "Context", "Hyper", "Rule", "Variants"]

RULES: dict[str, Rule] = {
    rule.name: rule
    for rule in (seed.V1, seed.V1_PAPER, normalised.V2, normalised.V3, importance.V4,
                 consolidation.V5, synaptic.V6, synaptic.V7)
}
DEFAULT_RULE = "v6"
