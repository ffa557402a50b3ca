"""Warnings attributed to the user's line.

A warning raised in a step reaches the user through torch's step wrappers, ``no_grad``,
Dynamo's disable wrapper and the base optimizer's hooks, a path whose depth differs by API: a
fixed ``stacklevel`` pointed inside swgl or torch.
"""

from __future__ import annotations

import os
import sys
import warnings

import torch

#: swgl's folder (this module's) and torch's
_INTERNAL = (os.path.dirname(__file__) + os.sep, os.path.dirname(torch.__file__) + os.sep)


def warn(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn(message, category)`` at the first frame outside swgl and torch."""
    level, frame = 2, sys._getframe(1)   # stacklevel 2: warn's caller
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
