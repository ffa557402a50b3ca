"""Feedback and oscillation (seed 001, flaws #8/#9): does the scale oscillate?

Seed 001 claims that with ``alpha=0.9`` the stability estimates oscillate with a period of
about 50 steps and cause 10x gradient-norm spikes. The loop it describes is
``stability -> modulated gradient -> stability``; in swgl the EMA reads the *raw* gradient
(tests/test_feedback.py), so the only loop left runs through the weights
(``scale -> update -> w -> next g and |w| -> stability``).

The seed's quick-start MLP (784-256-256-10) trains on a Fashion-MNIST subset with
``alpha=0.9``. Every step it records, per weight tensor, the mean log-scale
``x_t = mean(log c)`` (``c`` from the stored stability through :data:`swgl.stats.SCALES`, the
same formula as the rule) and the norm of the modulated gradient; every ``--every`` steps the
quantiles of ``c``. After ``--burn`` steps, per layer:

* ``std``: the standard deviation of ``x_t`` (detrended by a 200-step moving average);
* ``acf25``/``acf50``: its autocorrelation at lags 25 and 50 (a period-50 oscillation gives
  ``acf25 < 0 < acf50``);
* ``period``/``peak``: the periodogram divided by the spectrum of an AR(1) process with the
  same lag-1 autocorrelation (what an EMA of noise gives: red, no peak), smoothed over 5
  bins and normalised to mean 1 over periods 10-200 steps; ``peak`` is its maximum there and
  ``period`` where it lies. A real oscillation stands out as ``peak`` >> 1 (noise alone
  gives about 2-3);
* ``spike``: max / median of the modulated gradient norm (the seed's "10x spikes").

``*-shadow`` methods are the controls with the loop cut: SWGL updates its state on the
plain optimizer's trajectory but the modulated grads are thrown away.

Usage: ``python benchmarks/oscillation.py [--steps 2000]``; prints a table, writes
``benchmarks/results/oscillation.json`` and ``benchmarks/results/oscillation.png`` (quantile
bands of the scale per layer over time, drawn with :func:`swgl.plots.plot_stability`).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from swgl import SWGL
from swgl.rules import Hyper
from swgl.stats import SCALES

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True)
class Method:
    base: str                 # "sgd" or "adamw"
    rule: str
    shadow: bool = False      # SWGL state updates, modulated grads discarded (loop cut)
    lambda_reg: float = 0.0   # the seed's 0.01 makes v1 + SGD diverge (docs/results.md)


BASES = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.05),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-3),
}

METHODS = {
    "sgd+v1": Method("sgd", "v1"),
    "sgd+v1-shadow": Method("sgd", "v1", shadow=True),
    "sgd+v2": Method("sgd", "v2"),
    "sgd+v2-shadow": Method("sgd", "v2", shadow=True),
    "adamw+v1": Method("adamw", "v1"),
    "adamw+v2": Method("adamw", "v2"),
}


def run(method: Method, x, y, *, steps: int, alpha: float, every: int, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 256), nn.ReLU(),
                          nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    base = BASES[method.base](model.parameters())
    # pinned: the measured rule, whatever the library's defaults become
    swgl = SWGL(model.parameters(), alpha=alpha, rule=method.rule, lambda_reg=method.lambda_reg,
                signal="relative", mode="grad")
    weights = {n: p for n, p in model.named_parameters() if p.dim() == 2}
    hp = Hyper(alpha=alpha, lambda_reg=method.lambda_reg, eps=1e-8, max_boost=10.0)
    log_scale, gnorm, q_steps = [], [], []
    q_rows: dict[str, list[list[float]]] = {n: [] for n in weights}
    gen = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(0, len(y), (64,), generator=gen)
        base.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        raw = [p.grad.clone() for p in model.parameters()] if method.shadow else None
        swgl.step()
        gnorm.append(torch.stack(torch._foreach_norm([p.grad for p in weights.values()])).tolist())
        if raw is not None:
            for p, g in zip(model.parameters(), raw):
                p.grad.copy_(g)
        base.step()
        row = []
        for name, p in weights.items():
            _, c = SCALES[method.rule](swgl.stability(p), int(swgl.state[p]["step"]), hp)
            row.append(c.log().mean())
            if step % every == 0:
                q_rows[name].append(torch.quantile(c.flatten(), torch.tensor(QUANTILES)).tolist())
        if step % every == 0:
            q_steps.append(step)
        log_scale.append(torch.stack(row).tolist())
    return {"names": list(weights), "log_scale": log_scale, "gnorm": gnorm,
            "scale_quantiles": {"step": q_steps, "quantiles": list(QUANTILES), "layers": q_rows}}


def _detrend(x: np.ndarray, width: int = 200) -> np.ndarray:
    kernel = np.ones(width) / width
    pad = np.pad(x, (width // 2, width - 1 - width // 2), mode="edge")
    return x - np.convolve(pad, kernel, mode="valid")


def _acf(x: np.ndarray, lag: int) -> float:
    x = x - x.mean()
    den = float(np.dot(x, x))
    return float(np.dot(x[:-lag], x[lag:]) / den) if den > 0 else float("nan")


def analyse(series: np.ndarray, min_period: int = 10, max_period: int = 200) -> dict:
    """Oscillation statistics of one layer's mean log-scale (see the module docstring)."""
    x = _detrend(series)
    x = x - x.mean()
    nan = float("nan")
    if not np.isfinite(x).all() or x.std() == 0:
        return {"std": float(np.nan_to_num(x.std())), "acf25": nan, "acf50": nan,
                "period": nan, "peak": nan}
    power = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(len(x))
    # the spectrum an AR(1) with x's lag-1 autocorrelation would have: red, with no peak
    phi = _acf(x, 1)
    ar1 = 1.0 / (1.0 - 2.0 * phi * np.cos(2 * np.pi * freqs) + phi * phi)
    ratio = np.convolve(power / ar1, np.ones(5) / 5, mode="same")  # Daniell smoothing
    band = (freqs >= 1.0 / max_period) & (freqs <= 1.0 / min_period)
    ratio = ratio / ratio[band].mean()
    k = int(np.argmax(np.where(band, ratio, -1.0)))
    return {"std": float(x.std()), "acf25": _acf(x, 25), "acf50": _acf(x, 50),
            "period": float(1.0 / freqs[k]), "peak": float(ratio[k])}


def plot(results: dict, path) -> None:
    """Scale quantile bands (p5-p95 shaded, median line) per layer over time, per method."""
    from matplotlib.figure import Figure

    from swgl.plots import plot_stability

    names = list(results)
    cols = 3
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
    for ax, name in zip(axes.flat, names):
        plot_stability(results[name]["scale_quantiles"], ax)
        ax.set_ylabel("scale c (median, band p5-p95)")
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    fig.suptitle("distribution of the SWGL scale c per layer over training (alpha = 0.9)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main() -> None:
    from pathlib import Path

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--alpha", type=float, default=0.9)
    ap.add_argument("--burn", type=int, default=300)
    ap.add_argument("--every", type=int, default=10, help="steps between quantile records")
    ap.add_argument("--train", type=int, default=12000)
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/oscillation.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    from swgl.bench.data import load_dataset

    data = load_dataset("fashion-mnist")
    x, y = data.x_train[: args.train], data.y_train[: args.train]
    results = {}
    print(f"{'method':16} {'layer':10} {'mean log c':>10} {'std':>7} {'acf25':>6} {'acf50':>6} "
          f"{'period':>6} {'peak':>6} {'spike':>6}")
    for name in args.methods:
        t0 = time.time()
        res = run(METHODS[name], x, y, steps=args.steps, alpha=args.alpha, every=args.every)
        ls = np.array(res["log_scale"])[args.burn:]
        gn = np.array(res["gnorm"])[args.burn:]
        res["layers_stats"] = {}
        for j, layer in enumerate(res["names"]):
            st = analyse(ls[:, j])
            st["mean_log_scale"] = float(ls[:, j].mean())
            st["spike"] = float(gn[:, j].max() / np.median(gn[:, j]))
            res["layers_stats"][layer] = st
            print(f"{name:16} {layer:10} {st['mean_log_scale']:10.3f} {st['std']:7.4f} "
                  f"{st['acf25']:6.2f} {st['acf50']:6.2f} {st['period']:6.1f} {st['peak']:6.1f} "
                  f"{st['spike']:6.1f}")
        res["seconds"] = time.time() - t0
        results[name] = res
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    slim = {n: {k: v for k, v in r.items() if k not in ("log_scale", "gnorm")} | {
        "log_scale": r["log_scale"][:: max(1, args.every // 2)]} for n, r in results.items()}
    args.out.write_text(json.dumps({"args": meta, "results": slim}))
    plot(results, args.out.with_suffix(".png"))
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
