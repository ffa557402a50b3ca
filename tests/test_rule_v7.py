"""Rule ``v7`` (swgl.rules.synaptic): v6 with each shift's importance divided by the length of
the segment it was learned in, so that one strength serves segments of any length. That it is
v6 until the first shift, that a shift adds ``Om / mean(Om) / T``, how ``T`` is counted (at a
step's shift, at a boundary the user names, its floor), ``swgl.optim``, and
its checkpoints (its variants against each other: tests/test_rule_v6.py)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from swgl import RULES, SWGL
from swgl.rules import synaptic
from toy import resume_across_a_shift, step_across_a_shift_without_host_sync
from toy import shift_stream as _stream
from toy import train_across_a_shift as _train


def _mean(opt, model, name="consolidated"):
    return float(torch.cat([opt.state[p][name].flatten() for p in model.parameters()]).mean())


def test_v7_has_its_measured_strength_and_v6s_other_defaults():
    group = SWGL([torch.zeros(3, requires_grad=True)], rule="v7").param_groups[0]
    assert group["consolidation"] == synaptic.PER_STEP_STRENGTH == 0.3
    assert (group["lambda_reg"], group["consolidation_horizon"], group["mode"]) == (
        0.0, 0.0, "update")
    assert RULES["v7"].options == RULES["v6"].options
    assert RULES["v7"].state == RULES["v6"].state


def test_v7_is_v6_until_the_first_shift():
    v6, _ = _train("v6", n_steps=100, shift_at=10**9)
    v7, opt = _train("v7", n_steps=100, shift_at=10**9)
    plain, _ = _train(None, n_steps=100, shift_at=10**9)
    for a, b, c in zip(v6.parameters(), v7.parameters(), plain.parameters()):
        assert torch.equal(a, b) and torch.equal(b, c)
    assert opt.shifts() == [{"steps": 100, "last_shift": 0}]


@pytest.mark.parametrize("shift_at", [120, 300])
def test_a_shift_adds_one_over_its_segments_length(shift_at):
    """v6's first shift adds a term of mean 1 to ``F``; v7's adds ``1 / T``, ``T`` the steps
    from the start to the shift: the same pull summed over a segment of that length."""
    model, opt = _train("v7", n_steps=shift_at + 40, shift_at=shift_at)
    last = opt.shifts()[0]["last_shift"]
    assert shift_at < last <= shift_at + 10                       # no boundary given
    assert _mean(opt, model) == pytest.approx(1.0 / last, rel=1e-4)
    v6_model, v6_opt = _train("v6", n_steps=shift_at + 40, shift_at=shift_at)
    assert v6_opt.shifts() == opt.shifts()
    # the same importance up to the factor (the weights are the same until the shift)
    torch.testing.assert_close(opt.state[model.weight]["consolidated"] * last,
                               v6_opt.state[v6_model.weight]["consolidated"])


def test_the_segment_is_counted_from_the_last_shift_with_a_floor():
    cpu = [torch.tensor([200.0, 1.0, 1.0, 120.0]), torch.tensor([180.0, 1.0, 1.0, 100.0])]
    assert synaptic.segment(cpu) == 81.0                 # the freshest copy, t + 1 - t_last
    assert synaptic.segment(cpu, at_step=False) == 80.0  # a boundary between steps: t - t_last
    short = [torch.tensor([130.0, 1.0, 1.0, 120.0])]
    assert synaptic.segment(short) == synaptic.MIN_SEGMENT == 51.0
    # the device form (a 0-d tensor, no host read), here through the masked path's ops
    meta = [d.to("meta") for d in cpu]
    assert synaptic.segment(meta).shape == ()


def test_on_task_boundary_divides_by_the_steps_since_the_last_shift():
    model, opt = _train("v7", n_steps=100, shift_at=10**9)
    opt.on_task_boundary()
    assert opt.shifts() == [{"steps": 100, "last_shift": 100}]
    assert _mean(opt, model) == pytest.approx(1.0 / 100, rel=1e-4)
    opt.on_task_boundary()           # at once again: a segment of no steps counts as the floor
    F_now = _mean(opt, model)
    assert F_now == pytest.approx(1.0 / 100, rel=1e-4)   # no path since: nothing learned


def test_swgl_optim_runs_v7_as_the_wrapper_does():
    import swgl.optim

    torch.manual_seed(0)
    model = nn.Linear(8, 4)
    opt = swgl.optim.SGD(model.parameters(), lr=0.05, swgl={"rule": "v7"}, fused=False)
    for x, y in _stream(240, 120):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    wrapped_model, wrapped = _train("v7")
    assert opt.shifts() == wrapped.shifts() and opt.shifts()[0]["last_shift"] > 0
    for a, b in zip(model.parameters(), wrapped_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_a_checkpoint_resumes_bit_exactly_after_a_shift():
    full, model, resumed = resume_across_a_shift("v7")
    assert resumed.shifts()[0]["last_shift"] > 0
    for a, b in zip(full.parameters(), model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: host syncs exist only "
                    "between a host and a device")
def test_v7_step_has_no_host_sync_on_cuda():
    opt = step_across_a_shift_without_host_sync("v7")
    assert float(opt.state[opt.param_groups[0]["params"][0]]["detector"][3]) > 0
