"""Gradient starvation (seed 001, flaw #3): per-layer gradient and update norms in a deep MLP.

A plain deep MLP (``--depth`` Linear layers of width ``--width``, ReLU, PyTorch's default
init, no normalisation and no skip connections: early layers get the smallest gradients)
trains on a Fashion-MNIST subset with each method of :data:`METHODS`. At every step and for
every Linear weight it records

* ``grad``: ||g|| of the raw gradient (before SWGL);
* ``gain``: ||g_swgl|| / ||g||, what SWGL did to the gradient's norm (1 without SWGL);
* ``update``: ||w_t+1 - w_t|| / ||w_t||, the relative update the base optimizer made.

Summaries (per method, all from the relative update ``u_l`` of layer ``l``):

* ``early``/``late``: mean ``u_l`` over the first ``--window`` steps and the last ``--window``;
* ``freeze_l = late_l / early_l``: how much layer ``l`` slowed down (the seed claims v1 makes
  the first layer's collapse);
* ``starvation = (late_first / late_last) / (same ratio for the plain base optimizer)``: the
  first layer's share of learning relative to the last, against the base optimizer alone. 1
  keeps the plain depth profile; << 1 means the early layers are starved.

Usage: ``python benchmarks/starvation.py [--steps 2000] [--depth 10]``; prints a table, writes
``benchmarks/results/starvation.json`` and ``benchmarks/results/starvation.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from swgl import SWGL
from swgl.stats import layer_stats


@dataclass(frozen=True)
class Method:
    """A base optimizer and (optionally) SWGL's options."""

    base: str                       # key of BASES
    swgl: dict | None = None        # SWGL(...) options; None = the base optimizer alone


BASES: dict[str, Callable[[list, float | None], torch.optim.Optimizer]] = {
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr or 0.05),
    "adamw": lambda params, lr: torch.optim.AdamW(params, lr=lr or 1e-3),
}

#: v2 exactly as measured here, whatever the library's defaults become
V2 = dict(rule="v2", signal="relative", mode="grad")

METHODS: dict[str, Method] = {
    "sgd": Method("sgd"),
    "sgd+v1": Method("sgd", dict(rule="v1")),
    "sgd+v1(lambda=0)": Method("sgd", dict(rule="v1", lambda_reg=0.0)),
    "sgd+v2": Method("sgd", dict(**V2)),
    "sgd+v2(lambda=0)": Method("sgd", dict(**V2, lambda_reg=0.0)),
    "sgd+v2(max_damping=2)": Method("sgd", dict(**V2, max_damping=2.0)),
    "sgd+v2(max_boost=1000)": Method("sgd", dict(**V2, max_boost=1000.0)),
    "adamw": Method("adamw"),
    "adamw+v1": Method("adamw", dict(rule="v1")),
    "adamw+v2": Method("adamw", dict(**V2)),
    "adamw+v2(lambda=0)": Method("adamw", dict(**V2, lambda_reg=0.0)),
    "adamw+v2(update)": Method("adamw", dict(V2, mode="update")),
}


def deep_mlp(n_in: int, n_out: int, width: int, depth: int) -> nn.Sequential:
    """``depth`` Linear layers with ReLU between them."""
    sizes = [n_in] + [width] * (depth - 1) + [n_out]
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < depth - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@dataclass
class Record:
    """Per-step, per-layer series (lists of length steps, one list per Linear weight)."""

    names: list[str]
    grad: list[list[float]] = field(default_factory=list)
    gain: list[list[float]] = field(default_factory=list)
    update: list[list[float]] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)
    at_boost: list[list[float]] = field(default_factory=list)   # every `stats_every` steps
    mean_scale: list[list[float]] = field(default_factory=list)


def train(
    method: Method,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    steps: int,
    width: int,
    depth: int,
    batch: int = 64,
    lr: float | None = None,
    seed: int = 0,
    stats_every: int = 50,
) -> tuple[nn.Module, Record]:
    """Train a fresh deep MLP with ``method`` for ``steps`` batches; record per-layer norms."""
    torch.manual_seed(seed)
    model = deep_mlp(x[0].numel(), int(y.max()) + 1, width, depth)
    weights = {n: p for n, p in model.named_parameters() if p.dim() == 2}
    base = BASES[method.base](list(model.parameters()), lr)
    swgl = SWGL(model.parameters(), **method.swgl) if method.swgl is not None else None
    rec = Record(list(weights))
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, len(y), (batch,), generator=gen)
        base.zero_grad()
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        rec.loss.append(loss.item())
        ws = list(weights.values())
        raw = torch._foreach_norm([w.grad for w in ws])
        if swgl is not None:
            swgl.step()
        mod = torch._foreach_norm([w.grad for w in ws])
        before = [w.detach().clone() for w in ws]
        base.step()
        delta = torch._foreach_norm(torch._foreach_sub([w.detach() for w in ws], before))
        size = torch._foreach_norm(before)
        raw, mod, delta, size = torch.stack([torch.stack(t) for t in (raw, mod, delta, size)])
        rec.grad.append(raw.tolist())
        rec.gain.append(torch.where(raw > 0, mod / raw, 1.0).tolist())
        rec.update.append((delta / size).tolist())
        if swgl is not None and (step % stats_every == 0 or step == steps - 1):
            st = layer_stats(swgl, model)
            rec.at_boost.append([st[n].at_boost for n in weights])
            rec.mean_scale.append([st[n].mean_scale for n in weights])
    return model, rec


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    out = model(x)
    if not torch.isfinite(out).all():
        return float("nan")
    return (out.argmax(1) == y).float().mean().item()


def _window_mean(rows: list[list[float]], lo: int, hi: int) -> list[float]:
    cols = list(zip(*rows[lo:hi]))
    return [sum(v for v in c if math.isfinite(v)) / max(1, sum(math.isfinite(v) for v in c))
            for c in cols]


def summarize(rec: Record, window: int) -> dict:
    """``early``/``late`` relative update per layer and ``freeze`` = late / early."""
    n = len(rec.update)
    early = _window_mean(rec.update, 0, window)
    late = _window_mean(rec.update, n - window, n)
    return {
        "early": early,
        "late": late,
        "freeze": [lt / e if e > 0 else float("nan") for e, lt in zip(early, late)],
        "grad_late": _window_mean(rec.grad, n - window, n),
        "gain_late": _window_mean(rec.gain, n - window, n),
        "final_loss": sum(rec.loss[-window:]) / window,
    }


def starvation(summary: dict, plain: dict) -> float:
    """(late_first / late_last) of a method over the same ratio of its plain base optimizer."""
    num = summary["late"][0] * plain["late"][-1]
    den = summary["late"][-1] * plain["late"][0]
    return num / den if den > 0 else float("nan")


def _downsample(rows: list[list[float]], every: int) -> list[list[float]]:
    return [_window_mean(rows, i, min(i + every, len(rows))) for i in range(0, len(rows), every)]


def plot(results: dict, path: Path, every: int) -> None:
    """Relative update norm per layer over steps, one panel per method."""
    from matplotlib.figure import Figure

    names = list(results)
    cols = 5
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.0 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    axes[0, 0].set_ylim(1e-8, 10.0)  # a diverged or frozen run would stretch the shared axis
    for ax, name in zip(axes.flat, names):
        series = results[name]["update_series"]
        depth = len(series[0]) if series else 0
        steps = [i * every for i in range(len(series))]
        for layer in range(depth):
            color = (layer / max(1, depth - 1), 0.2, 1 - layer / max(1, depth - 1))
            ax.plot(steps, [r[layer] for r in series], color=color, linewidth=0.9,
                    label=f"L{layer}" if layer in (0, depth // 2, depth - 1) else None)
        ax.set_yscale("log")
        ax.set_title(f"{name}  (acc {results[name]['acc']:.3f})", fontsize=9)
        ax.set_xlabel("step")
        ax.legend(fontsize="x-small")
    for ax in axes[:, 0]:
        ax.set_ylabel("||Δw|| / ||w|| per step")
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle("per-layer relative update norm (blue = first layer, red = last)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--depth", type=int, default=10)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--window", type=int, default=200)
    ap.add_argument("--train", type=int, default=12000, help="training subset size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/starvation.json"))
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG from --out's JSON")
    args = ap.parse_args()
    if args.plot_only:
        saved = json.loads(args.out.read_text())
        plot(saved["results"], args.out.with_suffix(".png"), saved["every"])
        return
    torch.set_num_threads(1)

    from swgl.bench.data import load_dataset

    data = load_dataset("fashion-mnist")
    x, y = data.x_train[: args.train], data.y_train[: args.train]
    x_te, y_te = data.x_test[:2000], data.y_test[:2000]
    every = max(1, args.steps // 200)
    results: dict[str, dict] = {}
    for name in args.methods:
        t0 = time.time()
        model, rec = train(METHODS[name], x, y, steps=args.steps, width=args.width,
                           depth=args.depth, seed=args.seed)
        results[name] = {
            **summarize(rec, args.window),
            "acc": accuracy(model, x_te, y_te),
            "layers": rec.names,
            "update_series": _downsample(rec.update, every),
            "grad_series": _downsample(rec.grad, every),
            "at_boost": rec.at_boost,
            "mean_scale": rec.mean_scale,
            "seconds": time.time() - t0,
        }
    for name, res in results.items():
        plain = results.get(METHODS[name].base)
        res["starvation"] = starvation(res, plain) if plain else float("nan")

    head = (f"{'method':24} {'acc':>6} {'loss':>7} {'u_L0 early':>10} {'u_L0 late':>10} "
            f"{'freeze L0':>9} {'freeze Llast':>12} {'starv.':>7} {'gain L0':>8} {'gain Llast':>10}"
            f" {'at_boost L0':>11}")
    print(head)
    for name, r in results.items():
        boost = r["at_boost"][-1][0] if r["at_boost"] else float("nan")
        print(f"{name:24} {r['acc']:6.3f} {r['final_loss']:7.3f} {r['early'][0]:10.2e} "
              f"{r['late'][0]:10.2e} {r['freeze'][0]:9.3f} {r['freeze'][-1]:12.3f} "
              f"{r['starvation']:7.3f} {r['gain_late'][0]:8.3f} {r['gain_late'][-1]:10.3f}"
              f" {boost:11.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    args.out.write_text(json.dumps({"args": meta, "every": every, "results": results}))
    plot(results, args.out.with_suffix(".png"), every)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
