"""benchmarks/v5_adam_pilots.py: a pilot runs its own phases, in rule v5, for its run only.

The data is synthetic (the harness's loader is bypassed), so the test needs no Fashion-MNIST.
"""

import pytest

from benchmark_scripts import load

P = load("v5_adam_pilots")


@pytest.fixture
def fake_data(bright_pixels):
    bright_pixels(P.e)


def _pilot(**kw):
    """si-pull on three permuted tasks of 10 steps, the shifts forced at their starts."""
    cfg = P.e.method_runs("small", "si-pull", {"sgd": (0.1,)}, seeds=(0,), pilot="si-pull",
                          lam=1e-2, h=0.0, decay=1.0,
                          swgl={"lambda_reg": 0.0, "consolidation": 1e-2,
                                "consolidation_horizon": 0.0})[0]
    return dict(cfg, tasks=3, n=640, oracle=0, **kw)   # a shift at each new task


def test_a_control_changes_the_run_and_the_rule_comes_back(fake_data):
    """The fifteenth session found the controls equal to v6 bit for bit: their configs named
    no rule, and the default had become v6. Now each pilot runs as v5 with its own phases."""
    own = P.rules.RULES["v5"]
    full, uniform = P.run_one(_pilot()), P.run_one(_pilot(control="global"))
    v6 = P.e.run_one(dict(_pilot(), swgl={"rule": "v6"}, method="swgl", pilot=None))
    assert P.rules.RULES["v5"] is own
    assert full["cfg"]["swgl"]["rule"] == "v5" and full["finite"] and uniform["finite"]
    assert full["test"] != uniform["test"]
    assert full["test"] != v6["test"]


def test_a_pilot_refuses_another_rule(fake_data):
    with pytest.raises(ValueError, match="a pilot runs as rule 'v5', got swgl rule='v6'"):
        P.run_one(_pilot(swgl={"rule": "v6"}))
    assert P.rules.RULES["v5"] is P.cons.V5
