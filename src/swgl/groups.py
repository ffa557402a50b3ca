"""Layer-aware param groups (seed 001, flaw #10), in the style of timm's
``param_groups_weight_decay``.

One SWGL setting for every tensor treats a LayerNorm gain, a bias and an embedding row like
a weight matrix. :func:`param_groups` sorts a model's trainable parameters into four
categories, each with its own SWGL options:

* ``norms``: every parameter of a normalisation layer (:data:`NORM_TYPES`, or any module
  whose class name looks like one, such as Hugging Face's ``LlamaRMSNorm``);
* ``embeddings``: every parameter of an ``nn.Embedding`` / ``nn.EmbeddingBag`` (or a module
  whose class name contains ``Embedding``);
* ``biases``: parameters named ``bias`` in any other module;
* ``weights``: everything else.

Categories come from the owning module's type, not from parameter names alone; a parameter
shared by several modules (tied embeddings) belongs to the first owner in
``model.named_modules()`` order. ``overrides`` maps glob patterns of parameter names to a
category for what types cannot tell (a ViT's ``pos_embed``, say).

Example, biases and norms left unmodulated (``lambda_reg=0, consolidation=0`` under the
default rule ``v6`` and under ``v5``: no damping and no pull; ``lambda_reg=0`` under ``v4``;
``max_boost=1, max_damping=1`` under ``v2``/``v3``)::

    from swgl import SWGL, SWGLWrapper
    from swgl.groups import param_groups

    off = dict(lambda_reg=0.0, consolidation=0.0)
    two_object = SWGL(param_groups(model, biases=off, norms=off))
    wrapper = SWGLWrapper(param_groups(model, biases=off, norms=off, for_wrapper=True),
                          base=torch.optim.AdamW, base_kwargs={"lr": 1e-3})

:func:`merge` intersects these groups with a base optimizer's own (weight decay, say), so
each resulting group carries both sets of options.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from swgl.rules import DEFAULT_RULE, RULES

__all__ = ["CATEGORIES", "NORM_TYPES", "EMBEDDING_TYPES", "classify", "merge", "param_groups",
           "swgl_options"]

#: Categories, in the order their groups are returned.
CATEGORIES = ("weights", "biases", "norms", "embeddings")

#: Module types whose parameters are normalisation gains and shifts.
NORM_TYPES: tuple[type[nn.Module], ...] = tuple(
    t for t in (
        nn.modules.batchnorm._NormBase,   # BatchNorm*d, SyncBatchNorm, InstanceNorm*d
        nn.LayerNorm,
        nn.GroupNorm,
        getattr(nn, "RMSNorm", None),     # torch >= 2.4
    ) if t is not None
)
#: Module types whose parameters are embedding tables.
EMBEDDING_TYPES: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)

# Norm and embedding classes from other libraries (HF's LlamaRMSNorm, T5LayerNorm, ...).
_NORM_NAME = re.compile(r"(Layer|RMS|Group|Batch|Instance)_?Norm", re.IGNORECASE)
_EMBEDDING_NAME = re.compile(r"Embedding", re.IGNORECASE)


# SWGL arguments that apply to the whole optimizer: the optimizers read them from the
# constructor only, so a per-group value would be silently ignored.
_CONSTRUCTOR_ONLY = ("scaler", "cuda_graphs")


def swgl_options() -> dict[str, Any]:
    """SWGL's per-group options and their defaults, read from :class:`swgl.SWGL`'s signature."""
    from swgl.two_object import SWGL

    skip = {"self", "params", *_CONSTRUCTOR_ONLY}
    return {
        name: p.default
        for name, p in inspect.signature(SWGL.__init__).parameters.items()
        if name not in skip
    }


def _category(module: nn.Module, leaf: str) -> str:
    cls = type(module).__name__
    if isinstance(module, NORM_TYPES) or _NORM_NAME.search(cls):
        return "norms"
    if isinstance(module, EMBEDDING_TYPES) or _EMBEDDING_NAME.search(cls):
        return "embeddings"
    return "biases" if leaf == "bias" else "weights"


def classify(
    model: nn.Module, overrides: Mapping[str, str] | None = None
) -> dict[str, list[tuple[str, Tensor]]]:
    """``{category: [(name, param), ...]}`` for every trainable parameter of ``model``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    overrides = dict(overrides or {})
    for pattern, category in overrides.items():
        if category not in CATEGORIES:
            raise ValueError(
                f"overrides[{pattern!r}] must be one of {list(CATEGORIES)}, got {category!r}"
            )
    out: dict[str, list[tuple[str, Tensor]]] = {c: [] for c in CATEGORIES}
    seen: set[int] = set()
    used: set[str] = set()
    for mod_name, module in model.named_modules():
        for leaf, p in module.named_parameters(recurse=False):
            if id(p) in seen or not p.requires_grad:
                continue
            seen.add(id(p))
            name = f"{mod_name}.{leaf}" if mod_name else leaf
            category = _category(module, leaf)
            for pattern, forced in overrides.items():
                if fnmatch.fnmatchcase(name, pattern):
                    category = forced
                    used.add(pattern)
                    break
            out[category].append((name, p))
    unused = sorted(set(overrides) - used)
    if unused:
        raise ValueError(f"overrides {unused} match no trainable parameter of the model")
    return out


def _check_category_options(category: str, options: Any, known: Mapping[str, Any]) -> dict:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"{category} must be a dict of SWGL options, got {type(options).__name__}")
    for name in _CONSTRUCTOR_ONLY:
        if name in options:
            raise ValueError(
                f"{category}[{name!r}]={options[name]!r}: {name} is not a per-group option; "
                "pass it to the optimizer's constructor"
            )
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"{category} has unknown SWGL option(s) {unknown}; the options are {sorted(known)}"
        )
    from swgl.options import check_options

    # values are range-checked here, against the category's own rule if it names one, else
    # against the first rule that reads every option given (or the default, whose error then
    # names the option it does not read); the optimizer checks them again against its rule
    rule = options.get("rule") or next(
        (name for name, r in RULES.items() if set(options) <= r.options), DEFAULT_RULE)
    checked = {**known, **options, "rule": rule}
    try:
        check_options(checked)
    except (ValueError, TypeError) as err:
        raise type(err)(f"{category}: {err}") from None
    return {k: checked[k] for k in options}


def param_groups(
    model: nn.Module,
    *,
    weights: Mapping[str, Any] | None = None,
    biases: Mapping[str, Any] | None = None,
    norms: Mapping[str, Any] | None = None,
    embeddings: Mapping[str, Any] | None = None,
    overrides: Mapping[str, str] | None = None,
    for_wrapper: bool = False,
) -> list[dict[str, Any]]:
    """Param groups with separate SWGL options per category (see the module docstring).

    Each of ``weights``, ``biases``, ``norms`` and ``embeddings`` is a dict of
    :class:`~swgl.SWGL` options (``alpha``, ``max_boost``, ``max_damping``, ``rule``, ...);
    options left out take the optimizer's defaults. ``scaler`` and ``cuda_graphs`` apply to the
    whole optimizer: pass them to its constructor, not here. Empty categories give no group. With
    ``for_wrapper=True`` the options are stored as ``swgl_<option>``, the form
    :class:`~swgl.SWGLWrapper` and the base optimizer it shares its groups with expect.
    """
    if not isinstance(for_wrapper, bool):
        raise TypeError(f"for_wrapper must be a bool, got {for_wrapper!r}")
    from swgl.base import PREFIX

    known = swgl_options()
    given = dict(weights=weights, biases=biases, norms=norms, embeddings=embeddings)
    options = {c: _check_category_options(c, given[c], known) for c in CATEGORIES}
    prefix = PREFIX if for_wrapper else ""
    groups = []
    for category, named in classify(model, overrides).items():
        if named:
            groups.append({
                "params": [p for _, p in named],
                **{prefix + k: v for k, v in options[category].items()},
            })
    return groups


def _as_groups(grouping: Iterable[Any], which: int) -> list[dict[str, Any]]:
    groups = list(grouping)
    if groups and isinstance(groups[0], Tensor):
        groups = [{"params": groups}]
    for i, g in enumerate(groups):
        if not isinstance(g, Mapping) or "params" not in g:
            raise TypeError(f"groupings[{which}][{i}] must be a dict with 'params', got {g!r}")
    return [{**g, "params": list(g["params"])} for g in groups]


def merge(*groupings: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Intersect several groupings of the same params into one list of param groups.

    Each resulting group holds the params that share a group in every grouping, with the
    union of those groups' options, e.g. ``merge(timm.optim.param_groups_weight_decay(model,
    0.05), param_groups(model, biases=..., for_wrapper=True))`` for AdamW with weight decay
    only on weights and SWGL options per category. Every grouping must cover the same params;
    an option set to different values by two groupings is an error. Order follows the params'
    order in the first grouping.
    """
    if not groupings:
        raise ValueError("merge needs at least one grouping")
    parsed = [_as_groups(g, i) for i, g in enumerate(groupings)]
    where: list[dict[int, int]] = []
    for i, groups in enumerate(parsed):
        index: dict[int, int] = {}
        for j, g in enumerate(groups):
            for p in g["params"]:
                if id(p) in index:
                    raise ValueError(f"groupings[{i}] lists a parameter in more than one group")
                index[id(p)] = j
        where.append(index)
    reference = where[0]
    for i, index in enumerate(where[1:], start=1):
        if set(index) != set(reference):
            raise ValueError(
                f"groupings[{i}] covers {len(index)} params and groupings[0] {len(reference)} "
                "(or other ones): merge needs groupings of the same params"
            )
    merged: dict[tuple[int, ...], dict[str, Any]] = {}
    for g in parsed[0]:
        for p in g["params"]:
            key = tuple(index[id(p)] for index in where)
            if key not in merged:
                options: dict[str, Any] = {}
                for i, j in enumerate(key):
                    for k, v in parsed[i][j].items():
                        if k == "params":
                            continue
                        if k in options and options[k] != v:
                            raise ValueError(
                                f"groupings disagree on {k!r} ({options[k]!r} vs {v!r}) for the "
                                "same parameter"
                            )
                        options[k] = v
                merged[key] = {"params": [], **options}
            merged[key]["params"].append(p)
    return list(merged.values())
