"""avalanche-lib: ``SWGLPlugin`` modulates gradients before each update of a strategy.

Avalanche finds a plugin's callbacks by name (``before_training_exp``, ``before_update``...), so
this module does not import avalanche: it works with any version whose templates call those
callbacks. The plugin is SWGL's two-object mode: the strategy keeps its own optimizer (which
it may reset every experience), and SWGL's stability state lives in the plugin, so it carries
over from one experience to the next. Parameters a dynamic module adds (an
``IncrementalClassifier`` growing its head) join SWGL at the next experience.

Note: the avalanche-lib wheels import torchvision, whose PyPI wheels are built for CUDA torch;
with a CPU-only torch build (``torch==2.13.0+cpu``) ``import avalanche`` fails inside
torchvision ("operator torchvision::nms does not exist"). See docs/integrations.md.
"""

from __future__ import annotations

import inspect
from typing import Any

from swgl.options import check_options
from swgl.two_object import SWGL

__all__ = ["SWGLPlugin"]


class SWGLPlugin:
    """Add SWGL to an avalanche strategy: ``Naive(..., plugins=[SWGLPlugin(alpha=0.99)])``.

    The keyword options are :class:`~swgl.SWGL`'s, checked here. ``plugin.swgl`` is the
    :class:`~swgl.SWGL` instance (``None`` before training starts); ``state_dict()`` and
    ``load_state_dict()`` save and restore it with your checkpoints.
    """

    def __init__(self, **swgl_options: Any) -> None:
        bound = inspect.signature(SWGL).bind([], **swgl_options)  # TypeError on unknown names
        bound.apply_defaults()
        check_options({k: v for k, v in bound.arguments.items() if k not in ("params", "scaler")})
        self.options = swgl_options
        self.swgl: SWGL | None = None
        self._pending_state: dict[str, Any] | None = None

    def before_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        """Cover the model's trainable params, adding those that appeared since last time."""
        params = [p for p in strategy.model.parameters() if p.requires_grad]
        if self.swgl is None:
            self.swgl = SWGL(params, **self.options)
            if self._pending_state is not None:
                self.swgl.load_state_dict(self._pending_state)
                self._pending_state = None
            return
        known = {id(p) for group in self.swgl.param_groups for p in group["params"]}
        new = [p for p in params if id(p) not in known]
        if new:
            self.swgl.add_param_group({"params": new})

    def before_update(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        """Modulate the grads the strategy's optimizer is about to apply."""
        if self.swgl is None:  # a template that skipped before_training_exp
            self.before_training_exp(strategy)
        self.swgl.step()

    def state_dict(self) -> dict[str, Any]:
        if self.swgl is None:
            raise RuntimeError("SWGLPlugin has no state before the first training experience")
        return self.swgl.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore SWGL's state; before training starts it is installed on the first experience."""
        if self.swgl is None:
            self._pending_state = state_dict
        else:
            self.swgl.load_state_dict(state_dict)
