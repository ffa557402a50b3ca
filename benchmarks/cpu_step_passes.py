"""Where the default CPU step's time goes (issue 13, thirteenth session).

1. The default two-object step (``SWGL(params)`` then ``torch.optim.SGD``) against SGD alone on
   the 6.3M-param MLP of ``step_speed.py``: rounds of timed steps, the min of the rounds'
   medians (steadier than one median on a shared machine).
2. With ``--passes``, each pass the step makes, timed alone on one 4.2M-element fp32 tensor:
   the compiled functions the rules run (:mod:`swgl.kernels.compiled`) and the eager ops they
   are measured against.

Prints a table and writes JSON. To compare two trees, run it under each tree's ``src``:

    PYTHONPATH=src python benchmarks/cpu_step_passes.py --passes --json out.json
    PYTHONPATH=/path/to/old/src python benchmarks/cpu_step_passes.py
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from swgl import SWGL

sys.path.insert(0, str(Path(__file__).parent))
from step_speed import _cpu_ms  # noqa: E402  (its median of timed calls, after 3 warm-ups)

DIMS = (1024, 2048, 2048, 10)
#: elements of the tensor the passes are timed on (the MLP's largest weight, 2048 x 2048)
NUMEL = 2048 * 2048


def step_ratio(rounds: int, reps: int) -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(*(torch.nn.Linear(a, b) for a, b in zip(DIMS, DIMS[1:])))
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    pre, base, alone = SWGL(params), torch.optim.SGD(params, lr=1e-3), torch.optim.SGD(
        params, lr=1e-3)

    def default() -> None:
        pre.step()
        base.step()

    for _ in range(5):   # the first steps compile and build the state
        default()
    swgl_ms, sgd_ms = [], []
    for _ in range(rounds):
        swgl_ms.append(_cpu_ms(default, reps))
        sgd_ms.append(_cpu_ms(alone.step, reps))
    return dict(default_ms=round(min(swgl_ms), 2), sgd_ms=round(min(sgd_ms), 2),
                ratio=round(min(swgl_ms) / min(sgd_ms), 2))


def passes(reps: int) -> dict:
    from swgl.kernels import compiled as cc
    from swgl.rules import importance, synaptic

    g = torch.randn(NUMEL) * 1e-3
    s, p = torch.rand(NUMEL), torch.randn(NUMEL)
    b, path = p.clone(), torch.zeros(NUMEL)
    one, keep = cc.scalar(1.0), cc.scalar(1e-3)
    ema, ema_no_sum = cc.compiled(importance._ema_one), cc.compiled(importance._ema_no_sum)
    g2, path_one = cc.compiled(importance._g2_sum_one), cc.compiled(synaptic._path_one)
    rows = {
        "copy (the snapshot)": lambda: b.copy_(p),
        "SGD's add_": lambda: p.add_(g, alpha=-1e-9),
        "guard: aminmax": lambda: torch.aminmax(g),
        "EMA with its sum (compiled)": lambda: ema(g, s, None, one, keep),
        "EMA alone (compiled)": lambda: ema_no_sum(g, s, None, one, keep),
        "signal: capped fp64 sum (compiled)": lambda: g2(g, one),
        "signal: torch.dot": lambda: torch.dot(g, g),
        "path (compiled)": lambda: path_one(path, p, b, g, one),
    }
    out = {}
    for name, fn in rows.items():
        for _ in range(3):
            fn()
        out[name] = round(_cpu_ms(fn, reps), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--passes", action="store_true", help="also time each pass alone")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = dict(torch=torch.__version__, threads=args.threads,
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  step=step_ratio(args.rounds, args.reps))
    step = result["step"]
    print(f"default two-object step {step['default_ms']:.2f} ms, SGD alone {step['sgd_ms']:.2f} "
          f"ms: {step['ratio']:.2f}x ({args.threads} threads, 6.3M params)")
    if args.passes:
        result["passes_ms"] = passes(args.reps)
        print(f"\none pass over {NUMEL / 1e6:.1f}M fp32 elements")
        for name, ms in result["passes_ms"].items():
            print(f"{name:<36} {ms:>7.2f} ms")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
