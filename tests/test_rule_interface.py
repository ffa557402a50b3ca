"""A rule plugs in with one module and one registry entry (docs/architecture.md): a toy rule
with two state tensors (an importance EMA and an anchor) that acts after the base step by
pulling the params toward the anchor, as issue 12's rule is to."""

from __future__ import annotations

import copy

import pytest
import torch

import swgl.rules
from swgl import SWGL
from swgl.rules import Rule, Variants
from toy import toy_batches as _batches
from toy import toy_loss as _loss
from toy import toy_model as _model


def _before(params, grads, state, steps, hp, ctx):
    for g, s in zip(grads, state["stability"]):
        s.lerp_(g.float().square(), 1.0 - hp.alpha)
    return [torch.zeros(()) for _ in params]


def _after(params, snapshots, state, steps, aux, hp, ctx):
    for p, s, a in zip(params, state["stability"], state["anchor"]):
        pull = hp.lambda_reg * s / (s + hp.eps)  # important elements are pulled harder
        p.add_(pull * (a - p.float()))


TOY = Rule(
    name="toy-anchor",
    before=Variants(_before, _before),
    after=Variants(_after, _after),
    options=frozenset({"alpha", "lambda_reg", "eps", "max_boost", "mode"}),
    state=(("stability", 0.0), ("anchor", "param")),
    modes=("update",),
)


@pytest.fixture
def toy_rule(monkeypatch):
    monkeypatch.setitem(swgl.rules.RULES, TOY.name, TOY)


def _train(model, opt, base, batches):
    for batch in batches:
        base.zero_grad()
        _loss(model, batch).backward()
        opt.step()
        if base is not opt:
            base.step()


@pytest.mark.parametrize("api", ["two-object", "wrapper"])
def test_a_two_state_rule_that_acts_after_the_base_step(toy_rule, api):
    model = _model()
    start = [p.detach().clone() for p in model.parameters()]
    base = torch.optim.SGD(model.parameters(), lr=0.5)
    opt = (SWGL(model.parameters(), rule="toy-anchor", lambda_reg=1.0) if api == "two-object"
           else SWGL.wrap(base, rule="toy-anchor", lambda_reg=1.0))
    _train(model, opt, base if api == "two-object" else opt, _batches(3))
    p = next(model.parameters())
    state = opt.state[p]
    assert set(state) == {"stability", "anchor", "step"}
    anchor = state["anchor"]
    assert torch.equal(anchor, start[0])  # the anchor is the param it started from
    # lambda_reg=1 pulls important elements (s >> eps) all the way back to the anchor
    important = state["stability"] > 1e-4
    assert important.any()
    torch.testing.assert_close(p.detach()[important], start[0][important])


def test_a_two_state_rule_round_trips_through_a_checkpoint(toy_rule):
    model = _model()
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = SWGL(model.parameters(), rule="toy-anchor", lambda_reg=0.1)
    _train(model, opt, base, _batches(2))
    saved = copy.deepcopy(opt.state_dict())
    other = SWGL(model.parameters(), rule="toy-anchor", lambda_reg=0.1)
    other.load_state_dict(saved)
    for p in model.parameters():
        assert torch.equal(other.state[p]["anchor"], opt.state[p]["anchor"])
