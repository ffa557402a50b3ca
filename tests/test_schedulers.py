"""LR schedulers drive the wrapper (and the two-object pattern's base) like any optimizer."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

from swgl import SWGL, SWGLWrapper

STEPS = 12

SCHEDULERS = {
    "step": lambda opt: lr_scheduler.StepLR(opt, step_size=3, gamma=0.5),
    "onecycle": lambda opt: lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=STEPS),
    "cosine": lambda opt: lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS, eta_min=1e-4),
    "cosine-restarts": lambda opt: lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=4),
}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))


def _loss(model: nn.Module, step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(step)
    return model(torch.randn(8, 5, generator=gen)).pow(2).mean()


def _groups(model: nn.Module) -> list[dict]:
    first, *rest = model.parameters()
    return [{"params": [first]}, {"params": rest, "lr": 0.02}]


def _reference_schedule(name: str) -> list[list[float]]:
    """The lrs (and betas) the scheduler produces on a plain AdamW."""
    opt = torch.optim.AdamW(_groups(_model()), lr=0.01)
    sched = SCHEDULERS[name](opt)
    out = []
    for _ in range(STEPS):
        opt.step()
        sched.step()
        out.append([(g["lr"], g["betas"][0]) for g in opt.param_groups])
    return out


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
@pytest.mark.parametrize("build", ["wrap", "class"])
def test_scheduler_on_the_wrapper(name, build):
    model = _model()
    if build == "wrap":
        opt = SWGL.wrap(torch.optim.AdamW(_groups(model), lr=0.01))
    else:
        opt = SWGLWrapper(_groups(model), base=torch.optim.AdamW, base_kwargs={"lr": 0.01})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        sched = SCHEDULERS[name](opt)
        seen = []
        for step in range(STEPS):
            opt.zero_grad()
            loss = opt.step(lambda step=step: _loss(model, step).backward() or 0.0)
            assert loss == 0.0
            sched.step()
            seen.append([(g["lr"], g["betas"][0]) for g in opt.base.param_groups])
    assert seen == _reference_schedule(name)
    assert opt.param_groups is opt.base.param_groups
    assert sched.get_last_lr() == [g["lr"] for g in opt.base.param_groups]
    assert all(float(opt.state[p]["step"]) == STEPS for p in model.parameters())


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_scheduler_state_round_trips_with_the_wrapper(name):
    model = _model()
    opt = SWGL.wrap(torch.optim.AdamW(_groups(model), lr=0.01))
    sched = SCHEDULERS[name](opt)
    for step in range(STEPS // 2):
        opt.zero_grad()
        _loss(model, step).backward()
        opt.step()
        sched.step()
    # deepcopy, as a checkpoint would: torch's load_state_dict aliases same-device tensors.
    saved_opt, saved_sched = copy.deepcopy(opt.state_dict()), copy.deepcopy(sched.state_dict())
    lrs = [g["lr"] for g in opt.param_groups]

    clone_model = _model()
    clone_model.load_state_dict(model.state_dict())
    clone = SWGL.wrap(torch.optim.AdamW(_groups(clone_model), lr=0.01))
    clone_sched = SCHEDULERS[name](clone)
    clone.load_state_dict(saved_opt)
    clone_sched.load_state_dict(saved_sched)
    assert [g["lr"] for g in clone.param_groups] == lrs
    for step in range(STEPS // 2, STEPS):
        for o, s, m in ((opt, sched, model), (clone, clone_sched, clone_model)):
            o.zero_grad()
            _loss(m, step).backward()
            o.step()
            s.step()
    for p, q in zip(model.parameters(), clone_model.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["stability"], clone.state[q]["stability"])


@pytest.mark.parametrize("name", sorted(SCHEDULERS))
def test_scheduler_on_the_two_object_patterns_base(name):
    model = _model()
    base = torch.optim.AdamW(_groups(model), lr=0.01)
    swgl = SWGL(model.parameters())
    sched = SCHEDULERS[name](base)
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(STEPS):
            base.zero_grad()
            _loss(model, step).backward()
            swgl.step()
            base.step()
            sched.step()
            seen.append([(g["lr"], g["betas"][0]) for g in base.param_groups])
    assert seen == _reference_schedule(name)
    assert all(float(swgl.state[p]["step"]) == STEPS for p in model.parameters())
    assert all("lr" not in g for g in swgl.param_groups)  # SWGL's own groups are untouched


class ScheduleFreeLike(torch.optim.SGD):
    """Stands in for a schedule-free optimizer: it has train() and eval()."""

    def __init__(self, params, lr: float = 0.1) -> None:
        super().__init__(params, lr=lr)
        self.calls: list[str] = []

    def train(self) -> None:
        self.calls.append("train")

    def eval(self) -> None:
        self.calls.append("eval")


def test_train_and_eval_forward_to_the_base():
    model = _model()
    base = ScheduleFreeLike(model.parameters())
    opt = SWGL.wrap(base)
    opt.eval()
    opt.train()
    opt.eval()
    assert base.calls == ["eval", "train", "eval"]


def test_train_and_eval_are_no_ops_without_base_support():
    opt = SWGL.wrap(torch.optim.SGD(_model().parameters(), lr=0.1))
    assert not hasattr(opt.base, "train")
    opt.train()
    opt.eval()
