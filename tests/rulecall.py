"""Calling one rule's phases directly, as swgl.functional does (options translated)."""

from swgl.rules import RULES, Context


def before(rule, impl, params, grads, stabilities, steps, hp, ctx=None):
    r = RULES[rule]
    return getattr(r.before, impl)(params, grads, {"stability": stabilities}, steps,
                                   r.hyper(hp), ctx or Context())


def after(rule, impl, params, snapshots, stabilities, steps, aux, hp, ctx=None):
    r = RULES[rule]
    getattr(r.after, impl)(params, snapshots, {"stability": stabilities}, steps, aux,
                           r.hyper(hp), ctx or Context())
