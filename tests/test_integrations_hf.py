"""HF Trainer: train, checkpoint and resume with SWGL, both ways of passing the optimizer."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments  # noqa: E402

from swgl import SWGL, SWGLWrapper  # noqa: E402
from swgl.integrations.hf import (  # noqa: E402
    SWGLStatsCallback,
    add_stats_logging,
    optimizer_cls_and_kwargs,
)
from swgl.stats import find_swgl  # noqa: E402

transformers.logging.set_verbosity_error()
logging.getLogger("accelerate").setLevel(logging.ERROR)
STEPS = 6


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n: int = 24, length: int = 8) -> None:
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 32, (n, length), generator=gen)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def _model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=32, n_positions=8, n_embd=16, n_layer=1, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(config)


def _args(out, **kwargs) -> TrainingArguments:
    return TrainingArguments(
        output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=4, learning_rate=1e-2,
        save_steps=STEPS // 2, logging_steps=2, report_to=[], seed=0, use_cpu=True,
        disable_tqdm=True, dataloader_num_workers=0, **{"save_strategy": "steps", **kwargs},
    )


def _wrapper_and_scheduler(model):
    opt = SWGL.wrap(torch.optim.AdamW(model.parameters(), lr=1e-2), alpha=0.9)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-2, total_steps=STEPS)
    return opt, sched


def _trainer(how: str, out, callbacks=(), **args_kwargs) -> Trainer:
    model = _model()
    args = _args(out, **args_kwargs)
    if how == "optimizers":
        kwargs = {"optimizers": _wrapper_and_scheduler(model)}
    elif how == "cls":
        kwargs = {"optimizer_cls_and_kwargs": (SWGLWrapper, {
            "base": torch.optim.AdamW, "base_kwargs": {"lr": 1e-2}, "alpha": 0.9})}
    else:
        raise ValueError(how)
    return Trainer(model=model, args=args, train_dataset=Tokens(), callbacks=list(callbacks),
                   **kwargs)


def _state(opt) -> dict[str, torch.Tensor]:
    opt = find_swgl(opt)
    return {f"{g}.{i}.{k}": v.clone()
            for g, group in enumerate(opt.param_groups)
            for i, p in enumerate(group["params"]) for k, v in opt.state[p].items()}


class _CaptureAtBegin(transformers.TrainerCallback):
    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.state = _state(optimizer)


@pytest.mark.parametrize("how", ["optimizers", "cls"])
def test_train_then_resume_equals_uninterrupted_training(tmp_path, how):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = _trainer(how, tmp_path / "run")
        reference.train()  # uninterrupted, and saves checkpoint-3 on the way
        ckpt = tmp_path / "run" / f"checkpoint-{STEPS // 2}"
        saved = torch.load(ckpt / "optimizer.pt", weights_only=True)  # as the Trainer loads it
        capture = _CaptureAtBegin()
        resumed = _trainer(how, tmp_path / "resumed", callbacks=[capture])
        resumed.train(resume_from_checkpoint=str(ckpt))

    assert isinstance(find_swgl(resumed.optimizer), SWGLWrapper)
    # The checkpoint holds SWGL's state, and the resumed Trainer installed it exactly.
    swgl_keys = [k for entry in saved["state"].values() for k in entry if k.startswith("swgl_")]
    assert "swgl_stability" in swgl_keys and "swgl_step" in swgl_keys
    flat = _flat_index(resumed)
    assert len(saved["state"]) == len(flat)
    for index, entry in saved["state"].items():
        g, i = flat[index]
        assert torch.equal(capture.state[f"{g}.{i}.stability"], entry["swgl_stability"])
        assert torch.equal(capture.state[f"{g}.{i}.step"], entry["swgl_step"])
        assert float(entry["swgl_step"]) == STEPS // 2
    ref, got = _state(reference.optimizer), _state(resumed.optimizer)
    assert ref.keys() == got.keys()
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-5, atol=1e-7, msg=key)
    for (name, p_ref), p in zip(reference.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(p, p_ref, rtol=1e-5, atol=1e-6, msg=name)
    lr_ref = reference.optimizer.param_groups[0]["lr"]
    assert resumed.optimizer.param_groups[0]["lr"] == pytest.approx(lr_ref)


def _flat_index(trainer) -> list[tuple[int, int]]:
    groups = find_swgl(trainer.optimizer).param_groups
    return [(g, i) for g, group in enumerate(groups) for i in range(len(group["params"]))]


def test_optimizer_cls_and_kwargs_follows_the_args(tmp_path):
    args = _args(tmp_path, weight_decay=0.05, adam_beta1=0.8)
    cls, kwargs = optimizer_cls_and_kwargs(args, alpha=0.95, max_boost=4.0)
    assert cls is SWGLWrapper and kwargs["base"] is torch.optim.AdamW
    assert kwargs["base_kwargs"]["lr"] == 1e-2 and kwargs["base_kwargs"]["betas"][0] == 0.8
    model = _model()
    opt = cls(model.parameters(), **kwargs)
    assert opt.param_groups[0]["swgl_alpha"] == 0.95 and opt.param_groups[0]["swgl_max_boost"] == 4
    assert opt.base.defaults["betas"][0] == 0.8


def test_optimizer_cls_and_kwargs_warns_that_clipping_hides_shifts(tmp_path):
    # the Trainer clips at max_grad_norm=1.0 by default: the default rule's detector reads
    # the clipped norm, which sits at the cap (the HF example found no shift with it)
    with pytest.warns(UserWarning, match=r"max_grad_norm=1.0 clips the gradients"):
        optimizer_cls_and_kwargs(_args(tmp_path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        optimizer_cls_and_kwargs(_args(tmp_path, max_grad_norm=0.0))
        optimizer_cls_and_kwargs(_args(tmp_path), rule="v4")   # no detector to hide


def test_optimizer_cls_and_kwargs_rejects_factories(tmp_path, monkeypatch):
    monkeypatch.setattr(Trainer, "get_optimizer_cls_and_kwargs",
                        staticmethod(lambda args, model=None: (object(), {})))
    with pytest.raises(ValueError, match="not a torch.optim.Optimizer subclass"):
        optimizer_cls_and_kwargs(_args(tmp_path))


def test_stats_reach_the_trainer_logs(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = _trainer("optimizers", tmp_path, save_strategy="no")
        add_stats_logging(trainer, quantiles=(0.5,))
        trainer.train()
    logged = [e for e in trainer.state.log_history if "swgl/all/mean_scale" in e]
    assert [e["step"] for e in logged] == [2, 4, 6]  # every logging_steps
    assert "swgl/transformer.h.0.attn.c_attn.weight/stability_p50" in logged[0]
    assert all(e["swgl/all/mean_scale"] > 0 for e in logged)


def test_stats_of_a_swgl_optim_optimizer_reach_the_trainer_logs(tmp_path):
    import swgl.optim

    model = _model()
    opt = swgl.optim.AdamW(model.parameters(), lr=1e-2, swgl=dict(alpha=0.9))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(model=model, args=_args(tmp_path, save_strategy="no"),
                          train_dataset=Tokens(), optimizers=(opt, None))
        add_stats_logging(trainer, quantiles=(0.5,))
        trainer.train()
    assert find_swgl(trainer.optimizer) is opt
    logged = [e for e in trainer.state.log_history if "swgl/all/mean_scale" in e]
    assert [e["step"] for e in logged] == [2, 4, 6]
    name = "transformer.h.0.attn.c_attn.weight"
    assert logged[-1][f"swgl/{name}/stability_p50"] == pytest.approx(
        opt.stats(model, quantiles=(0.5,))[name].quantiles[0.5], rel=1e-6)


def test_stats_callback_arguments():
    with pytest.raises(TypeError, match="log must be callable"):
        SWGLStatsCallback(log=3)
    with pytest.raises(ValueError, match="every_n_steps"):
        SWGLStatsCallback(print, every_n_steps=0)
