"""How far each stability storage drifts from fp32, measured in shadow on one training run.

A 784-256-256-10 MLP trains with AdamW + SWGL (fp32 state) on Permuted Fashion-MNIST. At
every step, one shadow SWGL per storage format gets a copy of the same weights and the same
raw gradients, so the formats differ only in how the state is stored, never in the
trajectory. Reported per format, over all steps and tensors:

* ``grad_rel_err``: ||g_format - g_fp32|| / ||g_fp32|| of the modulated gradient (what the
  base optimizer sees), mean and max over steps;
* ``factor_log_err``: mean |log(c_format / c_fp32)| of the per-element modulation factor;
* at the end, the dequantised stability against fp32's: median and 99th-percentile relative
  error over nonzero elements, and the worst per-tensor ratio of means (a stalled or biased
  EMA shows up there).

Besides the registered formats it measures the alternatives the choices in
``swgl.state.bf16`` and ``swgl.state.blockwise8`` were made against: bf16 and the 8-bit code
rounded to nearest, and bitsandbytes' absmax-scaled dynamic tree map (with the same
stochastic rounding).

Usage: ``python benchmarks/storage_accuracy.py [--steps-per-task 300] [--tasks 3]``; prints a
table and writes ``benchmarks/storage_accuracy.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from swgl import SWGL
from swgl.bench.data import load_dataset
from swgl.state import STORAGES
from swgl.state._common import dither_seed, n_blocks, padded_blocks, uniform
from swgl.state.bf16 import Bf16Storage
from swgl.state.blockwise8 import Blockwise8Storage, quantize

_PROJECTIONS = ("grouped", "grouped-block", "factored")


class _NearestBlockwise8(Blockwise8Storage):
    """blockwise8's code, rounded to the nearest level."""

    name = "blockwise8-nearest"

    def store(self, entry: dict[str, Tensor], working: Tensor) -> None:
        codes, lo, step = quantize(working.reshape(-1), self.block, None)
        entry["stability_codes"].copy_(codes)
        entry["stability_log2_lo"].copy_(lo)
        entry["stability_log2_step"].copy_(step)


def _dynamic_map() -> Tensor:
    """bitsandbytes' unsigned dynamic tree map (create_dynamic_map(signed=False)): 256 codes."""
    values = [0.0, 1.0]
    for i in range(7):
        edges = torch.linspace(0.1, 1, 2 ** (i + 1) + 1)
        values += ((10.0 ** (i - 6)) * (edges[:-1] + edges[1:]) / 2).tolist()
    return torch.tensor(sorted(values))


class _DynamicBlockwise8(Blockwise8Storage):
    """Absmax per 256-block (fp32) and bitsandbytes' dynamic map, stochastic rounding."""

    name = "blockwise8-dynamic"
    keys = ("stability_codes", "stability_absmax")
    table = _dynamic_map()

    def init(self, p: Tensor, value: float) -> dict[str, Tensor]:
        blocks = n_blocks(p.numel(), self.block)
        return {
            "stability_codes": torch.full((p.numel(),), 255 if value else 0, dtype=torch.uint8),
            "stability_absmax": torch.full((blocks,), float(value)),
        }

    def load(self, entry: dict[str, Tensor], p: Tensor) -> Tensor:
        k = padded_blocks(entry["stability_codes"], self.block).long()
        values = self.table[k] * entry["stability_absmax"][:, None]
        return values.view(-1)[: p.numel()].reshape(p.shape)

    def store(self, entry: dict[str, Tensor], working: Tensor) -> None:
        x = padded_blocks(working.reshape(-1), self.block)
        absmax = x.amax(1, keepdim=True)
        scaled = x / torch.where(absmax > 0, absmax, 1.0)
        below = (torch.searchsorted(self.table, scaled.contiguous(), right=True) - 1).clamp_(
            0, 254
        )
        v_lo, v_hi = self.table[below], self.table[below + 1]
        p_up = ((scaled - v_lo) / (v_hi - v_lo)).clamp_(0, 1)
        u = uniform(x.numel(), x.device, dither_seed(entry, working.shape, 7)).view_as(x)
        codes = below + (u < p_up)
        entry["stability_codes"].copy_(codes.view(-1)[: working.numel()].to(torch.uint8))
        entry["stability_absmax"].copy_(absmax.view(-1))


def _factor(s: Tensor, max_boost: float) -> Tensor:
    """v2's modulation factor up to the common bias correction: geometric mean over s."""
    log_mean = (s + 1e-30).log().mean()
    return (log_mean.exp() / (s + 1e-30)).clamp(1 / max_boost, max_boost)


def _permuted_batches(tasks: int, steps: int, batch: int, seed: int):
    data = load_dataset("fashion-mnist")
    x = data.x_train.flatten(1)
    gen = torch.Generator().manual_seed(seed)
    for t in range(tasks):
        perm = torch.arange(784) if t == 0 else torch.randperm(784, generator=gen)
        for _ in range(steps):
            idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
            yield x[idx][:, perm], data.y_train[idx]


def measure(tasks: int, steps_per_task: int, seed: int = 0) -> dict[str, dict[str, float]]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    params = list(model.parameters())
    base = torch.optim.AdamW(params, lr=1e-3)
    ref = SWGL(params)
    extra = {"bf16-nearest": Bf16Storage("bf16-nearest", stochastic=False),
             "blockwise8-nearest": _NearestBlockwise8(),
             "blockwise8-dynamic": _DynamicBlockwise8()}
    names = [n for n in STORAGES if n != "fp32"] + list(extra)
    STORAGES.update(extra)
    shadows = {}
    try:
        for name in names:
            copies = [p.detach().clone() for p in params]
            shadows[name] = (copies, SWGL(copies, storage=name))
        grad_err = {n: [] for n in names}
        factor_err = {n: [] for n in names}
        seconds = {n: 0.0 for n in names}
        max_boost = ref.param_groups[0]["max_boost"]
        for x, y in _permuted_batches(tasks, steps_per_task, 64, seed):
            base.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            for name, (copies, opt) in shadows.items():
                for p, q in zip(params, copies):
                    q.copy_(p.detach())
                    q.grad = p.grad.clone()
                start = time.perf_counter()
                opt.step()
                seconds[name] += time.perf_counter() - start
            ref.step()
            for name, (copies, opt) in shadows.items():
                num = sum(float((q.grad - p.grad).square().sum()) for p, q in zip(params, copies))
                den = sum(float(p.grad.square().sum()) for p in params)
                grad_err[name].append(math.sqrt(num / den))
                errs = [
                    (_factor(opt.stability(q), max_boost) / _factor(ref.stability(p), max_boost))
                    .log().abs().mean()
                    for p, q in zip(params, copies)
                ]
                factor_err[name].append(float(torch.stack(errs).mean()))
            base.step()
        return _summarise(ref, params, shadows, grad_err, factor_err, seconds)
    finally:
        for n in extra:
            STORAGES.pop(n, None)


def _summarise(ref, params, shadows, grad_err, factor_err, seconds) -> dict[str, dict]:
    out: dict[str, dict[str, float]] = {}
    for name, (copies, opt) in shadows.items():
        steps = len(grad_err[name])
        rel, ratios = [], []
        for p, q in zip(params, copies):
            s, sq = ref.stability(p), opt.stability(q)
            nz = s > 0
            rel.append(((sq - s).abs() / s)[nz])
            ratios.append(float(sq.mean() / s.mean()))
        rel_all = torch.cat(rel)
        out[name] = {
            "grad_rel_err_mean": sum(grad_err[name]) / steps,
            "grad_rel_err_max": max(grad_err[name]),
            "factor_log_err_mean": sum(factor_err[name]) / steps,
            "stability_rel_err_median": float(rel_all.median()),
            "stability_rel_err_p99": float(rel_all.quantile(0.99)),
            "mean_ratio_worst": max(ratios, key=lambda r: abs(r - 1)),
            "store_load_step_ms": 1000 * seconds[name] / steps,
            "projection": name in _PROJECTIONS,
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=3)
    parser.add_argument("--steps-per-task", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).with_suffix(".json")))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = measure(args.tasks, args.steps_per_task, args.seed)
    cols = ("grad_rel_err_mean", "grad_rel_err_max", "factor_log_err_mean",
            "stability_rel_err_median", "stability_rel_err_p99", "mean_ratio_worst",
            "store_load_step_ms")
    print(f"{'storage':20s} " + " ".join(f"{c[:24]:>24s}" for c in cols))
    for name, row in results.items():
        print(f"{name:20s} " + " ".join(f"{row[c]:24.4g}" for c in cols))
    Path(args.out).write_text(json.dumps(
        {"config": vars(args), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
