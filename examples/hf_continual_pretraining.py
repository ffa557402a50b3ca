"""Continual pre-training of a tiny GPT-2 with the HF Trainer, on a token stream that shifts.

The model is built from a config (random init, nothing is downloaded). The corpus is two
synthetic "domains": each is a Markov chain over the vocabulary with its own sparse transition
table. The model is pre-trained on domain A, then training continues on domain B, and the
held-out loss on both domains is reported after each phase: the rise on A is the forgetting,
the fall on B the adaptation. It runs once with plain AdamW and once with SWGL around the same
AdamW (``SWGL.wrap``), logging SWGL's statistics through ``trainer.log`` and, after each phase,
what its shift detector has seen (``opt.shifts()``)::

    python examples/hf_continual_pretraining.py --steps 200

One optimizer, with one learning-rate schedule, is built per run and handed to the Trainer of
every phase (``Trainer(..., optimizers=(opt, scheduler))``), as a continual pre-training run
keeps its optimizer from one domain to the next. That is what lets SWGL act: its shift
detector, its per-weight importance and its anchor are optimizer state, built on domain A and
needed at the switch to B. A Trainer left to build its own optimizer (``optimizer_cls_and_kwargs``
or ``args.optim``) builds a new one in each phase, and SWGL would meet B with no memory of A
(its detector restarting at step 0). The plain-AdamW run keeps its optimizer too, so the two
runs differ only in SWGL. The schedule re-warms at each domain: ``--steps // 10`` warm-up steps,
then a cosine decay to 0 over the phase's ``--steps``. The detector's step count is
``2 * --steps`` at the end (``"shifts"`` in the output); its ``last_shift`` is the step of its
last detected shift, 0 before any.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from swgl import SWGL
from swgl.integrations.hf import add_stats_logging

VOCAB = 96
SEQ_LEN = 32


def markov_domain(domain: int, sample_seed: int, n: int, successors: int = 4) -> torch.Tensor:
    """``n`` sequences from domain ``domain``'s Markov chain (a few likely successors per token)."""
    gen = torch.Generator().manual_seed(domain)
    table = torch.full((VOCAB, VOCAB), 1e-3)
    for tok in range(VOCAB):
        table[tok, torch.randperm(VOCAB, generator=gen)[:successors]] = 1.0
    table /= table.sum(1, keepdim=True)
    gen.manual_seed(1000 * domain + sample_seed)
    seqs = torch.empty(n, SEQ_LEN, dtype=torch.long)
    seqs[:, 0] = torch.randint(0, VOCAB, (n,), generator=gen)
    for t in range(1, SEQ_LEN):
        seqs[:, t] = torch.multinomial(table[seqs[:, t - 1]], 1, generator=gen).squeeze(1)
    return seqs


class Sequences(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


@torch.no_grad()
def held_out_loss(model: GPT2LMHeadModel, ids: torch.Tensor) -> float:
    model.eval()
    device = next(model.parameters()).device
    loss = model(input_ids=ids.to(device), labels=ids.to(device)).loss.item()
    model.train()
    return loss


def rewarmed_cosine(steps: int, warmup: int):
    """LR factor at scheduler step ``s``: the Trainer's ``"cosine"`` schedule (``warmup`` linear
    warm-up steps, then a cosine decay to 0), restarting every ``steps`` steps (each phase)."""

    def factor(s: int) -> float:
        s %= steps
        if s < warmup:
            return s / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))

    return factor


def run(use_swgl: bool, domains: dict[str, dict[str, torch.Tensor]], args) -> dict:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=VOCAB, n_positions=SEQ_LEN, n_embd=args.width, n_layer=2,
                        n_head=4, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    name = "swgl" if use_swgl else "adamw"
    # max_grad_norm=0: no clipping. The Trainer clips at 1.0 by default, and a clipped grad's
    # norm stays at the cap, so v6's detector (the squared grad norm's fast EMA against its
    # slow one) never sees the switch: measured here, no shift at the default, one 5 steps
    # after the switch without clipping (docs/results.md, seventeenth session).
    targs = TrainingArguments(
        max_grad_norm=0.0,
        output_dir=str(args.out / name), max_steps=args.steps, per_device_train_batch_size=16,
        learning_rate=args.lr, logging_steps=max(1, args.steps // 5), save_strategy="no",
        report_to=[], disable_tqdm=True, seed=0, use_cpu=not torch.cuda.is_available(),
    )
    # Built once, before the first Trainer, and kept across the domains (the docstring says
    # why). A Trainer given ``optimizers`` expects the params already on its device.
    model.to(targs.device)
    base_cls, base_kwargs = Trainer.get_optimizer_cls_and_kwargs(targs)  # args.optim's AdamW
    opt = base_cls(model.parameters(), **base_kwargs)
    if use_swgl:
        opt = SWGL.wrap(opt, alpha=0.99)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        opt, rewarmed_cosine(args.steps, args.steps // 10))
    history = {}
    for phase in ("A", "B"):  # continual: the same model and optimizer, a Trainer per domain
        trainer = Trainer(model=model, args=targs, train_dataset=Sequences(domains[phase]["train"]),
                          optimizers=(opt, scheduler))
        if use_swgl:
            add_stats_logging(trainer)
        trainer.train()
        history[f"after {phase}"] = {
            d: round(held_out_loss(model, domains[d]["test"]), 4) for d in domains
        }
        if use_swgl:
            last = [e for e in trainer.state.log_history if "swgl/all/mean_scale" in e][-1]
            history[f"after {phase}"]["swgl"] = {
                k.split("/")[-1]: round(v, 4) for k, v in last.items() if k.startswith("swgl/all/")
            }
            history[f"after {phase}"]["swgl"]["shifts"] = opt.shifts()
    return history


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per phase")
    parser.add_argument("--width", type=int, default=64, help="GPT-2 embedding size")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--train-seqs", type=int, default=2048)
    parser.add_argument("--out", type=Path, default=Path("runs/hf_continual"))
    args = parser.parse_args(argv)

    domains = {  # the splits of a domain share its transition table, not its sequences
        name: {"train": markov_domain(d, 0, args.train_seqs), "test": markov_domain(d, 1, 256)}
        for name, d in (("A", 1), ("B", 2))
    }
    results = {"chance loss": round(math.log(VOCAB), 4)}
    for name, use_swgl in (("adamw", False), ("swgl+adamw", True)):
        results[name] = run(use_swgl, domains, args)
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
