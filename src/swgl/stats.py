r"""Per-layer summaries of SWGL's state, for loggers, dashboards and plots.

For every parameter with SWGL state, :func:`layer_stats` reports

* quantiles of its stability as the rule reads it (bias-corrected :math:`\hat s` for ``v2``,
  the raw EMA :math:`s` for ``v1`` and ``v1-paper``);
* ``at_boost`` and ``at_damping``: the fraction of elements whose scale :math:`c` is at (or,
  for the unbounded seed rules, beyond) ``max_boost`` and ``1/max_boost``;
* ``mean_scale``: the mean of :math:`c`, the factor the last step multiplied gradients by
  (before ``lambda_reg``'s decay term under the seed's rules; under v4 to v7, whose damping
  takes its reference from the group's mean stability, before the group's progress rescale
  :math:`\rho`, a scalar in ``[1, max_boost]`` that depends on the step's grads).

The scale is recomputed from the stored stability by each rule's own ``factor`` (:data:`SCALES`,
from :mod:`swgl.rules`), so reading stats never touches the optimizer's state or grads.
Everything runs on the state's device and costs one host sync per call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Union

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from swgl.rules import RULES, Hyper, Rule
from swgl.rules.consolidation import freshest_on_host

__all__ = [
    "DEFAULT_QUANTILES",
    "SCALES",
    "LayerStats",
    "StatsHistory",
    "find_swgl",
    "layer_stats",
    "named_params",
    "quantile_key",
    "shifts",
    "to_scalars",
    "total",
]

DEFAULT_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Quantiles of larger tensors are taken on a strided sample of about this many elements.
MAX_QUANTILE_ELEMENTS = 1 << 24

#: Something that names parameters: a module, ``{name: param}`` or ``(name, param)`` pairs.
Names = Union[nn.Module, Mapping[str, Tensor], Iterable[tuple[str, Tensor]], None]


def _scale(rule: Rule, s: Tensor, step: int, hp: Hyper,
           group_mean: Tensor | None = None) -> tuple[Tensor, Tensor]:
    return rule.factor(s, step, rule.hyper(hp), group_mean)


#: ``rule name -> f(stability, step, hyper, group_mean=None) -> (stability as the rule reads
#: it, scale c)``: each rule's own ``factor``; ``group_mean`` is the mean stability over the
#: param's group, which v4's damping (and so v5 to v7's) reads (tests/test_stats.py checks it
#: against a real step).
SCALES: dict[str, Callable[..., tuple[Tensor, Tensor]]] = {
    name: partial(_scale, rule) for name, rule in RULES.items() if rule.factor is not None
}


# -- summaries --------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerStats:
    """One parameter's summary (see the module docstring for each field)."""

    numel: int
    step: int
    quantiles: dict[float, float]
    at_boost: float
    at_damping: float
    mean_scale: float


def find_swgl(optimizer: Any) -> Optimizer:
    """The SWGL optimizer inside ``optimizer``: itself, or the one a framework wrapped.

    An SWGL optimizer is an :class:`~swgl.SWGL`, an :class:`~swgl.SWGLWrapper` or one of
    :mod:`swgl.optim`'s. Lightning's ``LightningOptimizer`` keeps it as ``_optimizer`` and
    accelerate's ``AcceleratedOptimizer`` (the HF Trainer's) as ``optimizer``.
    """
    seen = optimizer
    for _ in range(4):
        # the classes' flag (SWGLBase's, swgl.optim's): no import cycle
        if getattr(type(seen), "is_swgl", False):
            return seen
        seen = getattr(seen, "_optimizer", None) or getattr(seen, "optimizer", None)
    raise TypeError(
        f"optimizer must be an SWGL, an SWGLWrapper or a swgl.optim optimizer (or a "
        f"framework's wrapper around one), got {type(optimizer).__name__}"
    )


def named_params(optimizer: Any, names: Names = None) -> dict[str, Tensor]:
    """The optimizer's params by name, in ``param_groups`` order.

    ``names`` (a module, a mapping or ``(name, param)`` pairs) names them; the others are
    called ``group{g}.param{i}``.
    """
    opt = find_swgl(optimizer)
    if names is None:
        pairs: Iterable[tuple[str, Tensor]] = ()
    elif isinstance(names, nn.Module):
        pairs = names.named_parameters()
    elif isinstance(names, Mapping):
        pairs = names.items()
    elif isinstance(names, Iterable):
        pairs = names
    else:
        raise TypeError(
            f"names must be a module, a mapping or (name, param) pairs, got {type(names).__name__}"
        )
    by_id = {id(p): str(name) for name, p in pairs}
    return {
        by_id.get(id(p), f"group{g}.param{i}"): p
        for g, group in enumerate(opt.param_groups)
        for i, p in enumerate(group["params"])
    }


def _check_quantiles(quantiles: Iterable[float]) -> tuple[float, ...]:
    qs = tuple(quantiles)
    for q in qs:
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 <= q <= 1.0:
            raise ValueError(f"quantiles must be numbers in [0, 1], got {q!r}")
    return qs


def _quantiles(x: Tensor, qs: tuple[float, ...]) -> Tensor:
    """Linear-interpolation quantiles (torch.quantile's default), without its size limit."""
    flat = x.flatten()
    if flat.numel() > MAX_QUANTILE_ELEMENTS:
        flat = flat[:: math.ceil(flat.numel() / MAX_QUANTILE_ELEMENTS)]
    ordered = flat.sort().values
    pos = torch.tensor(qs, dtype=torch.float64, device=x.device) * (ordered.numel() - 1)
    lo = pos.floor().long()
    hi = pos.ceil().long()
    frac = (pos - lo).to(ordered.dtype)
    return torch.lerp(ordered[lo], ordered[hi], frac)


def _full(t: Tensor) -> Tensor:
    """A DTensor's full value (a collective: call stats on every rank), else ``t``."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


@torch.no_grad()
def layer_stats(
    optimizer: Any,
    names: Names = None,
    quantiles: Iterable[float] = DEFAULT_QUANTILES,
) -> dict[str, LayerStats]:
    """Summaries of every parameter with SWGL state, keyed by name (in ``param_groups`` order).

    ``optimizer`` is an :class:`~swgl.SWGL`, an :class:`~swgl.SWGLWrapper` or a
    :mod:`swgl.optim` optimizer (or a framework's wrapper around one); ``names`` (a module, a
    mapping or ``(name, param)`` pairs) names the parameters, and unnamed ones are called
    ``group{g}.param{i}``. Parameters that have not taken a step yet are left out.
    """
    opt = find_swgl(optimizer)
    qs = _check_quantiles(quantiles)
    named = {id(p): name for name, p in named_params(opt, names).items()}
    rows: list[tuple[str, int, int, Tensor]] = []
    for group in opt.param_groups:
        # the classes' own reader: the wrapper's options carry a prefix, swgl.optim's are in
        # group["swgl"]
        option = partial(opt._option, group)
        rule = option("rule")
        hp = Hyper(
            alpha=option("alpha"), lambda_reg=option("lambda_reg"), eps=option("eps"),
            max_boost=option("max_boost"), max_damping=option("max_damping"),
        )
        stepped = [p for p in group["params"]
                   if (state := opt.state.get(p)) and "step" in state
                   and float(state["step"]) >= 1]
        stabilities = [_full(opt.stability(p)).float() for p in stepped]
        group_mean = (torch.stack([s.sum() for s in stabilities]).sum()
                      / sum(s.numel() for s in stabilities)) if stabilities else None
        for p, s in zip(stepped, stabilities):
            step = int(opt.state[p]["step"])
            seen, c = SCALES[rule](s, step, hp, group_mean)
            boost = torch.tensor(hp.max_boost, dtype=c.dtype)
            damp = torch.tensor(hp.min_scale, dtype=c.dtype)
            values = torch.cat([
                _quantiles(seen, qs).float(),
                torch.stack([
                    (c >= boost.to(c.device)).float().mean(),
                    (c <= damp.to(c.device)).float().mean(),
                    c.mean(),
                ]),
            ])
            rows.append((named[id(p)], p.numel(), step, values))
    if not rows:
        return {}
    table = torch.stack([v.to(rows[0][3].device) for *_, v in rows]).tolist()  # one sync
    out = {}
    for (name, numel, step, _), values in zip(rows, table):
        out[name] = LayerStats(
            numel=numel, step=step, quantiles=dict(zip(qs, values[: len(qs)])),
            at_boost=values[-3], at_damping=values[-2], mean_scale=values[-1],
        )
    return out


def shifts(param_groups: list[dict[str, Any]], state: Mapping[Tensor, dict[str, Tensor]],
           key: str = "detector") -> list[dict[str, int] | None]:
    """Per param group, what its shift detector (rules v5 to v7; its state under ``key``) has
    seen: ``{"steps": the group's steps, "last_shift": the step of its last detected shift,
    0 before any}``; None for a group whose rule has no detector or that has no state yet.
    ``last_shift`` 0 means the rule has not acted yet: under v6 the base optimizer has run
    unchanged. Reads the state on the host (a sync on a GPU: call it between steps, not in a
    hot loop)."""
    out: list[dict[str, int] | None] = []
    for group in param_groups:
        # every param holds a copy; one that missed steps an older one: the group's is the
        # copy with the most steps
        dets = [state[p][key] for p in group["params"] if key in state.get(p, {})]
        if not dets:
            out.append(None)
            continue
        steps, _, _, last = freshest_on_host(dets)
        out.append({"steps": int(steps), "last_shift": int(last)})
    return out


def total(stats: Mapping[str, LayerStats]) -> dict[str, float]:
    """Element-weighted ``at_boost``, ``at_damping`` and ``mean_scale`` over all layers."""
    n = sum(s.numel for s in stats.values())
    if n == 0:
        return {}
    return {
        key: sum(getattr(s, key) * s.numel for s in stats.values()) / n
        for key in ("at_boost", "at_damping", "mean_scale")
    }


def quantile_key(q: float) -> str:
    """``0.05 -> "stability_p5"``, ``0.5 -> "stability_p50"``: a logger-friendly name."""
    return f"stability_p{q * 100:g}"


def to_scalars(stats: Mapping[str, LayerStats], prefix: str = "swgl") -> dict[str, float]:
    """Flatten stats to ``{"swgl/<layer>/<metric>": value}`` plus ``swgl/all/*`` totals."""
    out: dict[str, float] = {}
    for name, s in stats.items():
        for q, v in s.quantiles.items():
            out[f"{prefix}/{name}/{quantile_key(q)}"] = v
        out[f"{prefix}/{name}/at_boost"] = s.at_boost
        out[f"{prefix}/{name}/at_damping"] = s.at_damping
        out[f"{prefix}/{name}/mean_scale"] = s.mean_scale
    for key, v in total(stats).items():
        out[f"{prefix}/all/{key}"] = v
    return out


@dataclass
class StatsHistory:
    """Stats over training, in the JSON layout of a bench cell's ``"stability"`` record.

    :meth:`to_dict` gives ``{"step": [...], "quantiles": [...], "layers": {name: [[q...],
    ...]}, "at_boost": {name: [...]}, "at_damping": {...}, "mean_scale": {...}}``; a layer
    missing at some step (no state yet) has ``None`` there. :func:`swgl.plots.plot_stability`
    draws it.
    """

    quantiles: tuple[float, ...] = DEFAULT_QUANTILES
    steps: list[int] = field(default_factory=list)
    series: dict[str, dict[str, list[Any]]] = field(default_factory=dict)

    _KEYS = ("layers", "at_boost", "at_damping", "mean_scale")

    def record(self, step: int, optimizer: Any, names: Names = None) -> dict[str, LayerStats]:
        """Append the stats of ``optimizer`` at ``step``; return them."""
        stats = layer_stats(optimizer, names, self.quantiles)
        self.steps.append(int(step))
        for key in self._KEYS:
            table = self.series.setdefault(key, {})
            for name in stats:
                table.setdefault(name, [None] * (len(self.steps) - 1))
            for name, values in table.items():
                s = stats.get(name)
                if s is None:
                    values.append(None)
                elif key == "layers":
                    values.append([s.quantiles[q] for q in self.quantiles])
                else:
                    values.append(getattr(s, key))
        return stats

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": list(self.steps),
            "quantiles": list(self.quantiles),
            **{key: self.series.get(key, {}) for key in self._KEYS},
        }
