"""swgl: Stability-Weighted Gradient Learning for PyTorch."""

from swgl import groups as groups  # layer-aware param groups (swgl.groups.param_groups)
from swgl.functional import swgl
from swgl.rules import DEFAULT_RULE, RULES
from swgl.two_object import SWGL
from swgl.wrapper import SWGLWrapper

__all__ = ["SWGL", "SWGLWrapper", "swgl", "groups", "RULES", "DEFAULT_RULE"]
__version__ = "0.1.0"
