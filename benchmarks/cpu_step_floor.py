"""The floor under the default rule's small CPU step (issue 13, eighteenth session).

The ``swgl bench`` target (swgl-sgd at most 1.5x naive-sgd per step) is set by the digits MLP,
whose step is a few dozen small ops. This times, on one thread, v6's steady-state step after
a shift (the EMA and the detector's signal, the snapshot, an SGD step, the pull, SI's path)
written as the dozen torch ops it needs on one flat fp32 tensor of the digits MLP's size
(17,610 elements), as foreach passes over the MLP's six tensors (the library's layout) and
with the state flat beside the six params (their grads and weights copied in and out),
against ``SWGL.wrap(SGD)`` with every default on one param of that size
and on the MLP's six tensors, and SGD alone. The library's own path adds its guard, its
step counters, its detector's bookkeeping and one op per tensor per pass: what a flat-buffer
state and a lean step would have to remove. ``--compiled`` adds the same passes as two
``torch.compile``d functions (slower than eager at this size: docs/results.md).

    python benchmarks/cpu_step_floor.py [--compiled] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn as nn

from swgl import SWGL

N = 17610
SIX = [(100, 64), (100,), (100, 100), (100,), (10, 100), (10,)]


def _minimal():
    """v6's step in a dozen ops on one flat tensor (the formulas of swgl.rules.synaptic, the
    detector's step on the host as the library's CPU path takes it)."""
    gen = torch.Generator().manual_seed(0)
    w, g = torch.randn(N, generator=gen), 0.01 * torch.randn(N, generator=gen)
    s, F, path, b = torch.zeros(N), torch.rand(N, generator=gen), torch.zeros(N), torch.empty(N)
    mu, det = w.clone(), [100.0, 1.0, 1.0, 50.0]
    one_minus_alpha, strength = torch.tensor(0.001), torch.tensor(3e-4)

    def step():
        g2 = g * g
        s.lerp_(g2, one_minus_alpha)
        n = float(g2.sum())
        t, f, q, last = det
        det[:] = [t + 1, f + 0.1 * (n - f), q + 0.01 * (n - q), last]
        b.copy_(w)
        w.add_(g, alpha=-0.1)                 # the base step (SGD)
        k = F * strength
        w.addcmul_(k, mu)
        k.add_(1.0)
        w.div_(k)
        d = w - b
        d.mul_(g)
        d.clamp_(-1e30, 1e30)
        path.sub_(d)
    return step


def _minimal_six():
    """:func:`_minimal`'s ops as foreach passes over the digits MLP's six tensors, the state
    kept per tensor as the library keeps it (its SGD step a foreach pass too): the floor of
    the library's layout, whatever its Python costs."""
    gen = torch.Generator().manual_seed(0)
    w = [torch.randn(shape, generator=gen) for shape in SIX]
    g = [0.01 * torch.randn(shape, generator=gen) for shape in SIX]
    s, path = [torch.zeros(shape) for shape in SIX], [torch.zeros(shape) for shape in SIX]
    F = [torch.rand(shape, generator=gen) for shape in SIX]
    b = [torch.empty(shape) for shape in SIX]
    mu, det = [x.clone() for x in w], [100.0, 1.0, 1.0, 50.0]
    one_minus_alpha, strength, one = torch.tensor(0.001), torch.tensor(3e-4), torch.tensor(1.0)

    def step():
        g2 = torch._foreach_mul(g, g)
        torch._foreach_lerp_(s, g2, one_minus_alpha)
        n = float(torch.stack(torch._foreach_norm(g2, 1)).sum())
        t, f, q, last = det
        det[:] = [t + 1, f + 0.1 * (n - f), q + 0.01 * (n - q), last]
        torch._foreach_copy_(b, w)
        torch._foreach_add_(w, g, alpha=-0.1)   # the base step (SGD)
        k = torch._foreach_mul(F, strength)
        torch._foreach_addcmul_(w, k, mu)
        torch._foreach_add_(k, [one] * len(k))
        torch._foreach_div_(w, k)
        d = torch._foreach_sub(w, b)
        torch._foreach_mul_(d, g)
        torch._foreach_clamp_min_(d, -1e30)
        torch._foreach_clamp_max_(d, 1e30)
        torch._foreach_sub_(path, d)
    return step


def _flat_six():
    """:func:`_minimal` with the state in one flat buffer per kind and the MLP's six params
    and grads as they are: the grads and the params copied into flat buffers and the pulled
    weights copied back (three multi-tensor copies), the SGD step torch's own."""
    gen = torch.Generator().manual_seed(0)
    ps = [nn.Parameter(torch.randn(shape, generator=gen)) for shape in SIX]
    for p in ps:
        p.grad = 0.01 * torch.randn(p.shape, generator=gen)
    params, numels = [p.detach() for p in ps], [p.numel() for p in ps]
    s, path, F = torch.zeros(N), torch.zeros(N), torch.rand(N, generator=gen)
    mu, b, g, w = torch.cat([p.reshape(-1) for p in params]), *(torch.empty(N) for _ in "bgw")

    def views(flat):
        return [v.view(p.shape) for v, p in zip(flat.split(numels), params)]
    wv, gv, bv = views(w), views(g), views(b)
    det = [100.0, 1.0, 1.0, 50.0]
    one_minus_alpha, strength, one = torch.tensor(0.001), torch.tensor(3e-4), torch.tensor(1.0)
    sgd = torch.optim.SGD(ps, lr=0.1)

    def step():
        torch._foreach_copy_(gv, [p.grad for p in ps])
        g2 = g * g
        n = float(g2.sum())
        s.lerp_(g2, one_minus_alpha)
        t, f, q, last = det
        det[:] = [t + 1, f + 0.1 * (n - f), q + 0.01 * (n - q), last]
        torch._foreach_copy_(bv, params)
        sgd.step()
        torch._foreach_copy_(wv, params)
        k = F * strength
        w.addcmul_(k, mu)
        k.add_(one)
        w.div_(k)
        d = w - b
        d.mul_(g)
        d.clamp_(-1e30, 1e30)
        path.sub_(d)
        torch._foreach_copy_(params, wv)
    return step


def _compiled():
    """:func:`_minimal`'s passes as two ``torch.compile``d functions (Inductor's C++ on the
    CPU: before the base step, after it), the detector's step on the host between them."""
    gen = torch.Generator().manual_seed(0)
    w, g = torch.randn(N, generator=gen), 0.01 * torch.randn(N, generator=gen)
    s, F, path, b = torch.zeros(N), torch.rand(N, generator=gen), torch.zeros(N), torch.empty(N)
    mu, det = w.clone(), [100.0, 1.0, 1.0, 50.0]
    one_minus_alpha, strength = torch.tensor(0.001), torch.tensor(3e-4)

    @torch.compile
    def before():
        g2 = g * g
        s.copy_(s + one_minus_alpha * (g2 - s))
        b.copy_(w)
        return g2.sum()

    @torch.compile
    def after():
        k = F * strength
        w.copy_((w + k * mu) / (1.0 + k))
        path.copy_(path - ((w - b) * g).clamp(-1e30, 1e30))

    def step():
        n = float(before())
        t, f, q, last = det
        det[:] = [t + 1, f + 0.1 * (n - f), q + 0.01 * (n - q), last]
        w.add_(g, alpha=-0.1)
        after()
    for _ in range(5):   # compile
        step()
    return step


def _library(shapes, swgl: bool):
    torch.manual_seed(0)
    ps = [nn.Parameter(torch.randn(shape)) for shape in shapes]
    for p in ps:
        p.grad = 0.01 * torch.randn_like(p)
    base = torch.optim.SGD(ps, lr=0.1)
    opt = SWGL.wrap(base) if swgl else base
    for _ in range(50):
        opt.step()
    if swgl:   # as after a shift: the pull runs
        for p in ps:
            opt.state[p]["detector"][3] = 1.0
    return opt.step


def _median_us(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * sorted(times)[n // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--json", help="write the table here")
    parser.add_argument("--compiled", action="store_true",
                        help="add the dozen ops compiled by torch.compile (needs a C++ compiler)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = {"v6 in a dozen ops, one flat tensor (SGD step included)": _minimal(),
            **({"the same, compiled (two torch.compile calls)": _compiled()}
               if args.compiled else {}),
            "the same as foreach passes, the MLP's six tensors": _minimal_six(),
            "the same, state flat, six params and grads copied in and out": _flat_six(),
            "SGD alone, one tensor": _library([(N,)], False),
            "SWGL.wrap(SGD), one tensor": _library([(N,)], True),
            "SGD alone, the MLP's six tensors": _library(SIX, False),
            "SWGL.wrap(SGD), the MLP's six tensors": _library(SIX, True)}
    best = {name: float("inf") for name in rows}
    for _ in range(args.rounds):   # interleaved rounds, the min of the medians
        for name, fn in rows.items():
            best[name] = min(best[name], _median_us(fn, args.steps))
    print("| step (one thread) | us |\n|---|---|")
    for name, us in best.items():
        print(f"| {name} | {us:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "us": best}, f, indent=1)


if __name__ == "__main__":
    main()
