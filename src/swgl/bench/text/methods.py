"""Methods of the text benchmark: the harness's strategies, all on AdamW (UPGD: its own).

A text method is a registered :class:`~swgl.bench.methods.MethodSpec` whose base optimizer
is replaced by AdamW, so every method shares the optimizer and the warm-up + cosine
schedule; UPGD keeps its optimizer (the schedule drives it too). ``swgl-adamw-groups`` is
``swgl-adamw`` with layer-aware groups from :mod:`swgl.groups`: biases, norms and
embeddings unmodulated (``max_boost = max_damping = 1``), as in
``benchmarks/layer_groups.py``.
"""

from __future__ import annotations

from dataclasses import replace

from torch import nn

from swgl import SWGLWrapper
from swgl import groups as layer_groups
from swgl.bench.methods import METHODS, OPTIMIZERS, Context, Method, MethodSpec
from swgl.bench.methods.optim import build_optimizer

__all__ = ["GROUPED", "UNMODULATED", "build_method", "text_spec", "tuned_grid"]

# no damping (lambda_reg=0) and no pull (consolidation=0): the default, v6, leaves these steps
# as the base makes them. (Until the twelfth session, under v5, they were still pulled toward
# their values at a detected shift, as docs/results.md measured.)
UNMODULATED = {"lambda_reg": 0.0, "consolidation": 0.0}
#: text-only method names -> the registered method they extend with layer-aware groups
GROUPED = {"swgl-adamw-groups": "swgl-adamw"}
#: strategy options the size preset supplies (when the strategy has them)
_PRESET_OPTIONS = ("fisher_samples", "memory")


def text_spec(name: str, cfg) -> MethodSpec:
    """``name``'s spec with AdamW as base optimizer and ``cfg``'s options applied (``cfg``: a
    :class:`~swgl.bench.text.config.TextConfig`, which imports this module)."""
    base = GROUPED.get(name, name)
    if base not in METHODS:
        raise ValueError(f"method must be one of {sorted([*METHODS, *GROUPED])}, got {name!r}")
    spec = METHODS[base]
    spec = replace(spec, name=name, optimizer=spec.optimizer if spec.optimizer == "upgd"
                   else "adamw")
    preset = cfg.size_preset
    options = {k: preset[k] for k in _PRESET_OPTIONS if k in spec.strategy.hparams}
    if spec.swgl is not None:
        options.update({f"swgl.{k}": v for k, v in cfg.swgl_opts.items()})
    options.update(cfg.method_opts.get(name, {}))
    return spec.with_options(options, OPTIMIZERS[spec.optimizer])


def tuned_grid(name: str, cfg) -> tuple[float, ...]:
    """The learning rates tried for ``name`` (empty: it takes AdamW's tuned lr or a pin)."""
    r = cfg.resolved()
    if "lr" in cfg.method_opts.get(name, {}):
        return ()
    if name == "upgd":
        return r.upgd_grid
    if name == "naive-adamw" or name.startswith("swgl-"):
        return r.lr_grid
    return ()


def build_method(spec: MethodSpec, model: nn.Module, ctx: Context, lr: float) -> Method:
    """The strategy with its optimizer (SWGL-wrapped, per-category if grouped)."""
    opts = dict(spec.options)
    hp = {k: opts.pop(k) for k in list(opts) if k in spec.strategy.hparams}
    lr = opts.pop("lr", lr)
    if spec.name in GROUPED:
        info = OPTIMIZERS["adamw"]
        groups = layer_groups.param_groups(model, biases=UNMODULATED, norms=UNMODULATED,
                                           embeddings=UNMODULATED, for_wrapper=True)
        optimizer = SWGLWrapper(groups, base=info.cls,
                                base_kwargs={"lr": lr, **info.kwargs, **opts}, **spec.swgl)
    else:
        optimizer = build_optimizer(OPTIMIZERS[spec.optimizer], model.parameters(), lr, opts,
                                    spec.swgl)
    return spec.strategy(model, optimizer, ctx, hp)
