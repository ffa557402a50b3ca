"""swgl: Stability-Weighted Gradient Learning for PyTorch."""

from swgl import groups as groups  # layer-aware param groups (swgl.groups.param_groups)
from swgl.functional import swgl
from swgl.modulator import DEFAULT_RULE, SWGL, SWGLWrapper
from swgl.rules import RULES

__all__ = ["SWGL", "SWGLWrapper", "swgl", "groups", "RULES", "DEFAULT_RULE"]
__version__ = "0.1.0"
