"""SWGL's options: one set of defaults and one validation, shared by :class:`swgl.SWGL`,
``SWGL.wrap`` and :mod:`swgl.optim`.

An option that the group's rule does not read (:attr:`swgl.rules.Rule.options`) must be left
unset: ``SWGL(params, rule="v1", signal="fisher")`` raises instead of ignoring ``signal``.
Options left unset (None) take the rule's default: ``mode`` its first mode, ``signal``
``"utility"`` (chosen by measurement, docs/results.md). ``shock`` is deprecated (measured
useless, CHANGELOG.md).

What each of the seed's options does under the default rule (v6, :mod:`swgl.rules.synaptic`:
v5's detector and pull, :mod:`swgl.rules.consolidation`, with SI's importance; v4's damping,
:mod:`swgl.rules.importance`, off unless ``lambda_reg`` > 0):

* ``lambda_reg``: the stability penalty's strength, how strongly an element's importance
  (v4's squared-gradient EMA) bends its step away; unset: the rule's default (v6, v7: 0, no
  damping, the base optimizer's step until a shift; v4, v5: 3.0; the seed's rules: 0.01);
  the seed's quick start passes 0.01, which turns v6's damping on, weakly;
* ``alpha``: the decay of the squared-gradient EMA (memory of about ``1 / (1 - alpha)``
  steps): v6's damping and ``SWGL.stats`` read it; unset: the rule's default (v4 to v7:
  0.999; the seed's rules: 0.99);
* ``eps``: a floor under the gradient's RMS in the group mean (``eps^2`` under ``m``), for
  the damping;
* ``max_boost``: the strongest damping is ``1/max_boost``, and the progress rescale is at
  most ``max_boost``.

``consolidation`` is v5's to v7's own: the strength of the pull toward the weights at the
last detected shift (unset: v6 3e-4 per unit of its normalised importance, v7 0.3 per unit of
importance per step of the segment it was learned in, v5 0.03; 0: no pull). So is
``consolidation_horizon``: from that many steps after a shift on, the pull fades as ``horizon /
steps since the shift`` (unset: v6 and v7 0, it keeps its strength; v5 20).
"""

from __future__ import annotations

from typing import Any

from swgl._validate import check_choice, check_range
from swgl._warn import warn
from swgl.rules import DEFAULT_RULE, RULES, Hyper

__all__ = ["DEFAULTS", "MATH_OPTIONS", "MODES", "SIGNALS", "check_options", "check_rule_change",
           "group_label", "hyper"]

#: Where the factor applies: to the gradient, or to the update the base optimizer makes.
MODES = ("grad", "update")
#: What v2/v3's EMA tracks (see :mod:`swgl.rules.normalised`).
SIGNALS = ("relative", "utility", "fisher")
DEFAULT_SIGNAL = "utility"

#: The options of the math, with their defaults (the seed's four first).
DEFAULTS: dict[str, Any] = dict(
    alpha=None, lambda_reg=None, eps=1e-8, max_boost=10.0, rule=DEFAULT_RULE, signal=None,
    mode=None, max_damping=None, shock=0.0, consolidation=None, consolidation_horizon=None,
)
MATH_OPTIONS = tuple(DEFAULTS)
#: What "unset" is for each option a rule may not read.
_UNSET: dict[str, Any] = dict(signal=None, max_damping=None, shock=0.0, consolidation=None,
                              consolidation_horizon=None)


def check_rule_change(old: str, new: str, params: list, state: dict, label: str) -> None:
    """A param group's ``rule`` set by hand between steps: refused once SWGL has stepped one
    of the group's ``params`` (a ``"step"`` in its ``state``): their state and filled-in
    options are the old rule's (v6's importance gains 1 per shift where v7's gains 1 / T, and
    their ``consolidation`` defaults differ a thousandfold; v4 and v5 keep other state).
    Before any step it is an option like another. ``label`` names the group in the message."""
    if old != new and any("step" in state.get(p, {}) for p in params):
        raise ValueError(
            f"{label}: rule changed from {old!r} to {new!r} after SWGL stepped under it; its "
            f"state and options are the old rule's: build a new optimizer for {new!r}, or "
            "load a state_dict saved under it"
        )


def group_label(index: int) -> str:
    """``check_options``' ``label`` naming an option by its param group."""
    return f"param_groups[{index}]['{{}}']"


def check_options(group: dict[str, Any], prefix: str = "", *, math_only: bool = False,
                  label: str = "{}", warn_deprecated: bool = True) -> None:
    """Validate one param group's SWGL options in place (numbers coerced to float, unset
    options resolved for the rule). ``prefix`` is the options' key prefix (the wrapper's
    ``swgl_``); ``math_only`` skips ``storage``, ``foreach`` and ``fused``; ``label`` formats
    an option's name in messages (``swgl.optim``'s ``"swgl['{}']"``); ``warn_deprecated``
    False skips the deprecation warnings (a group whose value the defaults' check warned of)."""
    def key(name: str) -> str:
        return prefix + name

    def shown(name: str) -> str:
        return label.format(prefix + name)

    def number(name: str, *args, **kwargs) -> None:
        group[key(name)] = check_range(shown(name), group[key(name)], *args, **kwargs)
        if group[key(name)] == float("inf"):
            raise ValueError(f"{shown(name)} must be finite, got inf")

    rule_name = group[key("rule")] = check_choice(shown("rule"), group[key("rule")], RULES)
    rule = RULES[rule_name]
    for name, unset in _UNSET.items():
        if name not in rule.options and group[key(name)] != unset:
            raise ValueError(
                f"{shown(name)}={group[key(name)]!r} means nothing to rule {rule_name!r} (it "
                f"reads {sorted(rule.options)}); leave it unset"
            )
    for name, value in rule.defaults:
        if group[key(name)] is None:
            group[key(name)] = value
    number("alpha", 0.0, 1.0, high_open=True)
    number("lambda_reg", 0.0)
    number("eps", 0.0, low_open=True)
    number("max_boost", 1.0)
    if "signal" in rule.options:
        if group[key("signal")] is None:
            group[key("signal")] = DEFAULT_SIGNAL
        group[key("signal")] = check_choice(shown("signal"), group[key("signal")], SIGNALS)
    if group[key("mode")] is None:  # the rule's own: v2/v3 scale updates, the seed's rules grads
        group[key("mode")] = rule.modes[0]
    group[key("mode")] = check_choice(shown("mode"), group[key("mode")], MODES)
    if group[key("mode")] not in rule.modes:
        mode = group[key("mode")]
        raise ValueError(
            f"{shown('mode')}={mode!r} is not a mode of rule {rule_name!r} (it runs in "
            f"{list(rule.modes)}); rules with mode {mode!r}: "
            f"{[name for name, r in RULES.items() if mode in r.modes]}"
        )
    if group[key("max_damping")] is not None:
        number("max_damping", 1.0)
    if "consolidation" in rule.options:
        number("consolidation", 0.0)
    if "consolidation_horizon" in rule.options:
        number("consolidation_horizon", 0.0)
    number("shock", 0.0)
    if 0.0 < group[key("shock")] <= 1.0:
        raise ValueError(f"{shown('shock')} must be 0 (off) or > 1, got {group[key('shock')]!r}")
    if group[key("shock")] > 0.0 and warn_deprecated:
        warn(
            f"{shown('shock')} is deprecated: measured useless (docs/results.md, drift: it never "
            "helped online accuracy); it will be removed, see CHANGELOG.md",
            DeprecationWarning,
        )
    if math_only:
        return
    from swgl.state import STORAGES

    group[key("storage")] = check_choice(shown("storage"), group[key("storage")], STORAGES)
    if not isinstance(group[key("foreach")], bool):
        raise TypeError(f"{shown('foreach')} must be a bool, got {group[key('foreach')]!r}")
    fused = group.setdefault(key("fused"), None)
    if fused is not None and not isinstance(fused, bool):
        raise TypeError(f"{shown('fused')} must be None or a bool, got {fused!r}")


def hyper(group: dict[str, Any], prefix: str = "") -> Hyper:
    """A checked group's math options (but ``rule``) as the rules take them (an unset
    ``consolidation``, for a rule that does not read it, is Hyper's 0)."""
    values = {name: group[prefix + name] for name in MATH_OPTIONS if name != "rule"}
    for name in ("consolidation", "consolidation_horizon"):   # 0 for rules that do not read them
        if values[name] is None:
            values[name] = 0.0
    return Hyper(**values)
