"""SWGL on 1 vs N GPUs at the same global batch: accuracy (Permuted Fashion-MNIST) and step time.

Tests seed 001's claim that SWGL's state drifts apart across DDP ranks and costs 8-15%
accuracy. Every world size sees exactly the same global batches (each rank takes its slice),
so a correct data-parallel run differs from the 1-GPU run only by floating-point reduction
order. Self-contained: it reads the four Fashion-MNIST IDX .gz files and nothing else.

One process per GPU (CPU/gloo works too, for a smoke test)::

    torchrun --standalone --nproc_per_node=1 benchmarks/distributed_2gpu.py \\
        --data-dir DIR --out w1.json
    torchrun --standalone --nproc_per_node=2 benchmarks/distributed_2gpu.py \\
        --data-dir DIR --out w2.json --compare-dir /tmp/w1
    python benchmarks/distributed_2gpu.py --summarize w1.json w2.json --out summary.json

``--params-dir`` saves each run's final params; ``--compare-dir`` reads a 1-GPU run's and
reports the largest difference. The summary prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import struct
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from swgl import SWGL
from swgl.distributed import check_consistency

LR = 1e-3
METHODS = {
    "adamw": lambda params: torch.optim.AdamW(params, lr=LR),
    "swgl-v1": lambda params: SWGL.wrap(torch.optim.AdamW(params, lr=LR), rule="v1"),
    "swgl-v2": lambda params: SWGL.wrap(torch.optim.AdamW(params, lr=LR), rule="v2"),
}


def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load(data_dir: Path, device: torch.device):
    def images(name):
        x = torch.from_numpy(read_idx(data_dir / name).reshape(-1, 784).astype(np.float32))
        return (x / 255.0).to(device)

    def labels(name):
        return torch.from_numpy(read_idx(data_dir / name).astype(np.int64)).to(device)

    return (images("train-images-idx3-ubyte.gz"), labels("train-labels-idx1-ubyte.gz"),
            images("t10k-images-idx3-ubyte.gz"), labels("t10k-labels-idx1-ubyte.gz"))


def mlp(hidden: int, depth: int) -> nn.Sequential:
    layers, width = [], 784
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, 10))


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -- accuracy: Permuted Fashion-MNIST ---------------------------------------------------------


def continual_run(method, seed, args, data, rank, world, device):
    x_tr, y_tr, x_te, y_te = data
    torch.manual_seed(seed)
    model = mlp(args.hidden, 2).to(device)
    net = DDP(model) if world > 1 else model
    opt = METHODS[method](net.parameters())
    gen = torch.Generator().manual_seed(seed)
    perms = [torch.randperm(784, generator=gen).to(device) for _ in range(args.tasks)]
    local = args.batch // world
    acc = []  # acc[i][j]: accuracy on task j after training through task i
    checks = []
    steps, t0 = 0, time.perf_counter()
    for task in range(args.tasks):
        order = torch.randperm(len(x_tr), generator=gen).to(device)
        for b in range(len(x_tr) // args.batch):
            idx = order[b * args.batch : (b + 1) * args.batch][rank * local : (rank + 1) * local]
            loss = nn.functional.cross_entropy(net(x_tr[idx][:, perms[task]]), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
        if world > 1 and method != "adamw":
            report = check_consistency(opt, params=True)
            checks.append({"identical": report.identical, "max_abs_diff": report.max_abs_diff})
        with torch.no_grad():
            acc.append([
                float((model(x_te[:, p]).argmax(1) == y_te).float().mean()) for p in perms
            ])
    sync(device)
    seconds = time.perf_counter() - t0
    final = acc[-1]
    result = {
        "method": method, "seed": seed, "world": world,
        "acc": sum(final) / len(final),
        "forgetting": sum(max(acc[i][j] for i in range(j, args.tasks - 1)) - final[j]
                          for j in range(args.tasks - 1)) / max(args.tasks - 1, 1),
        "matrix": acc, "steps": steps, "ms_per_step": 1e3 * seconds / steps,
        "consistency": checks,
    }
    name = f"{method}_s{seed}.pt"
    if rank == 0 and args.params_dir:
        Path(args.params_dir).mkdir(parents=True, exist_ok=True)
        params = {k: v.cpu() for k, v in model.state_dict().items()}
        torch.save(params, Path(args.params_dir) / name)
    if rank == 0 and args.compare_dir and (Path(args.compare_dir) / name).exists():
        ref = torch.load(Path(args.compare_dir) / name, weights_only=True)
        diffs = [float((v.cpu() - ref[k]).abs().max() / ref[k].abs().max())
                 for k, v in model.state_dict().items()]
        result["param_rel_diff_vs_ref"] = max(diffs)
    return result


# -- step time ---------------------------------------------------------------------------------


def _fsdp(model):
    from torch.distributed.fsdp import fully_shard

    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


def step_time(method, mode, args, rank, world, device, fused=None):
    torch.manual_seed(0)
    model = mlp(args.wide, 3).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    net = _fsdp(model) if mode == "fsdp2" else DDP(model) if world > 1 else model
    opt = METHODS[method](net.parameters())
    if method != "adamw":
        for group in opt.param_groups:
            group["swgl_fused"] = fused
    local = args.timing_batch // world
    x = torch.randn(local, 784, device=device)
    y = torch.randint(0, 10, (local,), device=device)

    def one_step():
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(args.warmup):
        one_step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    if world > 1:
        dist.barrier()
    t0 = time.perf_counter()
    for _ in range(args.timed):
        one_step()
    sync(device)
    ms = 1e3 * (time.perf_counter() - t0) / args.timed
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    stabilities = [s["stability"] for s in opt.state.values() if "stability" in s]
    state_numel = sum(getattr(s, "_local_tensor", s).numel() for s in stabilities)
    return {"method": method, "mode": mode, "world": world, "ms_per_step": ms, "fused": fused,
            "peak_mib": peak, "params": n_params, "swgl_state_numel_rank": state_numel}


def fsdp_parity(fused, args, data, rank, world, device, steps=20):
    """FSDP2 vs one process on the global batch: the largest relative differences.

    After one step the stability must agree to float rounding. Later steps drift apart the
    way any two reduction orders do: v2's update is about ``m * (|w| + delta) * sign(g)`` where
    it is not clamped, so a grad that is pure rounding noise flips its sign between runs.
    """
    x_tr, y_tr, _, _ = data
    nets = []
    for _ in range(2):
        torch.manual_seed(0)  # the same initial weights for both
        nets.append(mlp(args.hidden, 2).to(device))
    model, reference = _fsdp(nets[0]), nets[1]
    # SGD, not AdamW: Adam's first steps are sign(g), which turns rounding in tiny grads into
    # lr-sized differences and would hide what this checks.
    opts = [SWGL.wrap(torch.optim.SGD(m.parameters(), lr=0.05), fused=fused)
            for m in (model, reference)]
    local = args.batch // world
    for step in range(steps):
        idx = torch.arange(step * args.batch, (step + 1) * args.batch, device=device)
        for net, opt, rows in ((model, opts[0], idx[rank * local:(rank + 1) * local]),
                               (reference, opts[1], idx)):
            nn.functional.cross_entropy(net(x_tr[rows]), y_tr[rows]).backward()
            opt.step()
            opt.zero_grad()
    stab, param = 0.0, 0.0
    for p, q in zip(model.parameters(), reference.parameters()):
        s_p, s_q = opts[0].stability(p).full_tensor(), opts[1].stability(q)
        stab = max(stab, float((s_p - s_q).abs().max() / s_q.abs().max()))
        q = q.detach()
        param = max(param, float((p.detach().full_tensor() - q).abs().max() / q.abs().max()))
    return {"fused": fused, "steps": steps, "stab_rel_diff": stab, "param_rel_diff": param}


# -- driver ------------------------------------------------------------------------------------


def worker(args):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    cuda = torch.cuda.is_available() and not args.cpu
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
    data = load(Path(args.data_dir), device)
    out = {"world": world, "device": torch.cuda.get_device_name(device) if cuda else "cpu",
           "torch": torch.__version__, "args": vars(args), "runs": [], "timing": []}

    def save():
        if rank == 0:
            Path(args.out).write_text(json.dumps(out, indent=1))

    out["parity"] = []
    if world > 1 and "fsdp2" in args.modes:
        for fused, steps in ((f, n) for f in args.fused for n in (1, 20)):
            res = fsdp_parity(fused, args, data, rank, world, device, steps)
            out["parity"].append(res)
            if rank == 0:
                print(f"FSDP2 parity {res}", flush=True)
    for mode in args.modes:  # first: seconds, where the accuracy runs take minutes
        if mode == "fsdp2" and world == 1 and not args.fsdp_single:
            continue
        for method, fused in [("adamw", None)] + [("swgl-v2", f) for f in args.fused]:
            res = step_time(method, mode, args, rank, world, device, fused)
            out["timing"].append(res)
            if rank == 0:
                ms = res["ms_per_step"]
                print(f"world {world} {mode} {method} fused={fused}: {ms:.2f} ms/step", flush=True)
            save()
    for seed in range(args.seeds):
        for method in args.methods:
            res = continual_run(method, seed, args, data, rank, world, device)
            out["runs"].append(res)
            if rank == 0:
                print(f"world {world} {method} seed {seed}: ACC {res['acc']:.4f} "
                      f"{res['ms_per_step']:.2f} ms/step {res.get('param_rel_diff_vs_ref', '')}",
                      flush=True)
            save()
    if world > 1:
        dist.destroy_process_group()


def summarize(paths: list[str], out: str | None) -> None:
    runs, timing, parity, devices = [], [], [], set()
    for p in paths:
        d = json.loads(Path(p).read_text())
        runs += d["runs"]
        timing += d["timing"]
        parity += d.get("parity", [])
        devices.add(d["device"])
    summary = {"devices": sorted(devices), "accuracy": [], "timing": timing}
    print(f"devices: {sorted(devices)}")
    print(f"{'method':10} {'world':>5} {'ACC mean':>9} {'sd':>6} {'forget':>7} {'ms/step':>8} "
          f"{'rel param diff':>15} {'state identical':>15}")
    for method in dict.fromkeys(r["method"] for r in runs):
        for world in sorted({r["world"] for r in runs}):
            rs = [r for r in runs if r["method"] == method and r["world"] == world]
            if not rs:
                continue
            accs = [r["acc"] for r in rs]
            row = {
                "method": method, "world": world, "seeds": len(rs),
                "acc_mean": statistics.mean(accs),
                "acc_sd": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                "forgetting": statistics.mean(r["forgetting"] for r in rs),
                "ms_per_step": statistics.mean(r["ms_per_step"] for r in rs),
                "param_rel_diff_vs_1gpu": max(
                    (r["param_rel_diff_vs_ref"] for r in rs if "param_rel_diff_vs_ref" in r),
                    default=None),
                "state_identical": all(c["identical"] for r in rs for c in r["consistency"])
                if any(r["consistency"] for r in rs) else None,
            }
            summary["accuracy"].append(row)
            diff = row["param_rel_diff_vs_1gpu"]
            print(f"{method:10} {world:>5} {row['acc_mean']:>9.4f} {row['acc_sd']:>6.4f} "
                  f"{row['forgetting']:>7.4f} {row['ms_per_step']:>8.2f} "
                  f"{'-' if diff is None else f'{diff:.2e}':>15} {str(row['state_identical']):>15}")
    print(f"\n{'mode':6} {'method':8} {'fused':>6} {'world':>5} {'ms/step':>8} {'peak MiB':>9} "
          f"{'state/rank':>11}")
    for t in timing:
        peak = "-" if t["peak_mib"] is None else f"{t['peak_mib']:.0f}"
        print(f"{t['mode']:6} {t['method']:8} {str(t.get('fused')):>6} {t['world']:>5} "
              f"{t['ms_per_step']:>8.2f} {peak:>9} {t['swgl_state_numel_rank']:>11}")
    summary["parity"] = parity
    for row in parity:
        print(f"FSDP2 vs 1 process, fused={row['fused']}, {row['steps']} steps: stability rel diff "
              f"{row['stab_rel_diff']:.2e}, params rel diff {row['param_rel_diff']:.2e}")
    if out:
        Path(out).write_text(json.dumps(summary, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--out", default="distributed_2gpu.json")
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128, help="global batch")
    ap.add_argument("--hidden", type=int, default=1000)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--modes", nargs="+", default=["ddp", "fsdp2"], choices=["ddp", "fsdp2"])
    ap.add_argument("--fsdp-single", action="store_true", help="also time FSDP2 at world 1")
    ap.add_argument("--wide", type=int, default=4096, help="hidden width of the timing MLP")
    ap.add_argument("--timing-batch", type=int, default=2048)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--timed", type=int, default=50)
    ap.add_argument("--params-dir", help="save each run's final params here")
    ap.add_argument("--compare-dir", help="compare final params with a run saved here")
    ap.add_argument("--fused", nargs="+", default=[None], type=lambda v: {"auto": None,
                    "on": True, "off": False}[v], help="SWGL fused settings to time: auto on off")
    ap.add_argument("--cpu", action="store_true")
    ap.add_argument("--summarize", nargs="+", metavar="JSON")
    args = ap.parse_args()
    if args.summarize:
        summarize(args.summarize, args.out)
    else:
        worker(args)


if __name__ == "__main__":
    main()
