"""Train one method on one text scenario with one seed: the loss matrix and its curves.

Every method runs under the same schedule: linear warm-up over ``warmup_frac`` of the whole
stream, then cosine decay to ``min_lr_frac`` of the peak at its end (one schedule over all
domains, as in continual pre-training). On CUDA the forward and backward run under bf16
autocast; parameters and optimizer state stay fp32.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from swgl.bench.methods import Context
from swgl.bench.text import metrics
from swgl.bench.text.config import TextConfig
from swgl.bench.text.corpora import load_domain
from swgl.bench.text.methods import build_method, text_spec
from swgl.bench.text.model import VOCAB, ByteTransformer
from swgl.bench.text.stream import SCENARIOS, domain_weights, eval_windows, sample_windows

__all__ = ["autocast", "lr_lambda", "run_cell", "sync"]

log = logging.getLogger(__name__)

_RECENT = 4  # batches handed to end_task at a text-drift pseudo-boundary


def lr_lambda(total: int, warmup_frac: float, min_frac: float):
    """Multiplier of the peak lr at step s: linear warm-up, then cosine to ``min_frac``."""
    warmup = max(1, round(warmup_frac * total))

    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_frac + (1.0 - min_frac) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return f


def autocast(device: torch.device):
    """bf16 autocast on CUDA, nothing elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _evaluate(model: torch.nn.Module, windows: list[Tensor], device: torch.device,
              chunk: int) -> list[float]:
    """Mean next-byte loss (nats per byte) on each domain's fixed windows."""
    model.eval()
    out = []
    for w in windows:
        total = torch.zeros((), device=device)
        for i in range(0, len(w), chunk):
            b = w[i:i + chunk]
            with autocast(device):
                logits = model(b[:, :-1])
            total += F.cross_entropy(logits.float(), b[:, 1:], reduction="sum")
        out.append(total / w[:, 1:].numel())
    model.train()
    return torch.stack(out).tolist()  # one host sync per evaluation


def run_cell(cfg: TextConfig, scenario: str, method_name: str, seed: int, lr: float,
             split: str) -> dict[str, Any]:
    """Train ``method_name`` at peak ``lr`` and evaluate on ``split`` ('val' or 'test')."""
    cfg = cfg.resolved()
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={cfg.device!r} but torch.cuda.is_available() is False")
    splits = [load_domain(d, cfg.data_dir, cfg.max_bytes) for d in cfg.domains]
    train = [s.train.to(device) for s in splits]
    L, B, S, T = cfg.seq_len, cfg.batch_size, cfg.steps_per_domain, len(splits)
    windows = [eval_windows(s.split(split), cfg.eval_windows, L).to(device) for s in splits]
    torch.manual_seed(seed)
    model = ByteTransformer(cfg.model_size()).to(device)
    ctx = Context(n_outputs=VOCAB, batch_size=B)
    method = build_method(text_spec(method_name, cfg), model, ctx, lr)
    total = T * S
    sched = torch.optim.lr_scheduler.LambdaLR(
        method.optimizer, lr_lambda(total, cfg.warmup_frac, cfg.min_lr_frac))
    gen = torch.Generator().manual_seed(seed)
    boundaries = SCENARIOS[scenario]

    def batch(weights: np.ndarray) -> tuple[Tensor, Tensor, Tensor]:
        counts = torch.bincount(torch.multinomial(torch.from_numpy(weights), B, True,
                                                  generator=gen), minlength=T)
        parts = [sample_windows(train[j], int(n), L, gen) for j, n in enumerate(counts) if n]
        w = torch.cat(parts).to(device)
        # The domain id is the task id with boundaries; in text-drift no method sees it.
        t = int(weights.argmax()) if boundaries else 0
        return w[:, :-1], w[:, 1:], torch.full((B,), t, device=device)

    # Enough sequences for the strategy's importance estimate (EWC's fisher_samples, MAS's
    # samples), else one batch; fixed per (seed, domain).
    budget = max([int(getattr(method, k, 0)) for k in ("fisher_samples", "samples")] + [B])

    def domain_batches(t: int) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
        fixed = torch.Generator().manual_seed(seed * 1000 + t)
        for _ in range(-(-budget // B)):
            w = sample_windows(train[t], B, L, fixed).to(device)
            yield w[:, :-1], w[:, 1:], torch.full((B,), t, device=device)

    chunk = 2 * B
    b0 = _evaluate(model, windows, device, chunk)
    R = np.zeros((T, T))
    curve_steps, curve_loss = [0], [b0]
    eval_every = max(1, S // cfg.evals_per_domain)
    recent: deque = deque(maxlen=_RECENT)
    busy, pseudo = 0.0, 0
    wall = time.perf_counter()
    sync(device)
    start = time.perf_counter()
    method.begin_task(0)
    for step in range(total):
        t = step // S
        if boundaries and step % S == 0 and t > 0:
            method.begin_task(t)
        x, y, tids = batch(domain_weights(scenario, step, S, T))
        with autocast(device):
            method.observe(x, y, tids)
        sched.step()
        done = step + 1
        if not boundaries:
            recent.append((x, y, tids))
            if done % cfg.consolidate_every == 0 and done < total:
                snapshot = list(recent)
                method.end_task(pseudo, lambda snapshot=snapshot: iter(snapshot))
                pseudo += 1
                method.begin_task(pseudo)
        if boundaries and done % S == 0:
            method.end_task(t, lambda t=t: domain_batches(t))
        if done % S == 0 or done % eval_every == 0:
            sync(device)
            busy += time.perf_counter() - start
            losses = _evaluate(model, windows, device, chunk)
            curve_steps.append(done)
            curve_loss.append(losses)
            if done % S == 0:
                R[t] = losses
            start = time.perf_counter()
    n_params = sum(p.numel() for p in model.parameters())
    result = {
        "scenario": scenario, "method": method_name, "seed": seed, "lr": lr, "split": split,
        "metrics": {**metrics.loss_metrics(R), "time_per_step_ms": 1000.0 * busy / total},
        "L": R.tolist(), "b": b0, "domains": list(cfg.domains),
        "curve": {"step": curve_steps, "loss": curve_loss},
        "steps": total, "wall_s": time.perf_counter() - wall, "n_params": n_params,
    }
    log.info("text cell %s/%s/seed%d lr=%g: final=%.4f forgetting=%.4f", scenario, method_name,
             seed, lr, result["metrics"]["final_loss"], result["metrics"]["forgetting"])
    return result

