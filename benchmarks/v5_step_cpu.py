"""Rule v5's optimizer step on the CPU against v4's and AdamW's (the 6.3M-param MLP of
``step_speed.py``'s CPU suite, 2 threads, ``SWGL.wrap(AdamW)``), in the state after a detected
shift, where v5's pull runs at every step. Interleaved rounds; the median of per-round
medians; prints a table and writes JSON.

    python benchmarks/v5_step_cpu.py --json benchmarks/results/v5_step_cpu.json
"""

import argparse
import json
import statistics
import time

import torch
import torch.nn as nn

from swgl import SWGL

#: name -> (rule, fused): None rule is AdamW alone
SETUPS = {"adamw": (None, None), "v4": ("v4", None), "v5": ("v5", None),
          "v5 fused=False": ("v5", False)}


def _make(rule, fused):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(),
                          nn.Linear(2048, 10))
    base = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
    return model, (base if rule is None else SWGL.wrap(base, rule=rule, fused=fused))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(2)
    x, y = torch.randn(256, 1024), torch.randint(0, 10, (256,))

    def step(model, opt):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        t = time.perf_counter()
        opt.step()
        return time.perf_counter() - t

    runs = {name: _make(*cfg) for name, cfg in SETUPS.items()}
    for name, (model, opt) in runs.items():
        for _ in range(3):                      # compile, allocate
            step(model, opt)
        if SETUPS[name][0] == "v5":             # as after a shift: the pull runs every step
            for p in model.parameters():
                opt.state[p]["detector"][3] = 1.0
                opt.state[p]["consolidated"].uniform_(0.0, 2.0)
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, (model, opt) in runs.items():
            times[name].append(statistics.median(step(model, opt) for _ in range(args.steps)))
    ms = {name: 1e3 * statistics.median(ts) for name, ts in times.items()}
    print(f"{'setup':16s} {'opt step ms':>12s} {'vs AdamW':>9s}")
    for name, t in ms.items():
        print(f"{name:16s} {t:12.2f} {t / ms['adamw']:8.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"ms": ms, "vs_adamw": {k: v / ms["adamw"] for k, v in ms.items()},
                       "torch": torch.__version__, "threads": 2, "rounds": args.rounds}, f,
                      indent=1)


if __name__ == "__main__":
    main()
