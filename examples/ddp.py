"""SWGL under DistributedDataParallel, with gradient accumulation.

    torchrun --standalone --nproc_per_node=2 examples/ddp.py            # CPU (gloo) or GPUs (NCCL)
    torchrun --standalone --nproc_per_node=2 examples/ddp.py --accumulate 4

DDP all-reduces the grads during backward, so SWGL reads the same grads on every rank and its
state stays bit-identical: no sync layer. With accumulation, call the optimizer once, after the
last (synced) backward; ``no_sync()`` covers the micro-batches before it. The final
``check_consistency`` proves the state agrees (it is a collective: every rank calls it).
"""

import argparse
import os
from contextlib import nullcontext

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP

from swgl import SWGL
from swgl.distributed import check_consistency


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--accumulate", type=int, default=1, help="micro-batches per step")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    torch.manual_seed(0)  # DDP broadcasts rank 0's weights anyway
    model = DDP(nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)).to(device))
    opt = SWGL.wrap(torch.optim.AdamW(model.parameters(), lr=1e-3))
    gen = torch.Generator().manual_seed(rank)  # every rank reads its own data
    teacher = torch.randn(32, 4, generator=torch.Generator().manual_seed(0)).to(device)

    for step in range(args.steps):
        for micro in range(args.accumulate):
            x = torch.randn(16, 32, generator=gen).to(device)
            last = micro == args.accumulate - 1
            with nullcontext() if last else model.no_sync():
                loss = nn.functional.mse_loss(model(x), x @ teacher) / args.accumulate
                loss.backward()
        opt.step()  # after the synced backward: SWGL sees all-reduced grads
        opt.zero_grad()
        if rank == 0 and step % 10 == 0:
            print(f"step {step:3d}  loss {loss.item() * args.accumulate:.4f}")

    report = check_consistency(opt, named_params=model.module.named_parameters(), params=True)
    if rank == 0:
        print(f"{world} ranks: SWGL state and params identical across ranks: {report.identical} "
              f"({report.compared} tensors, max diff {report.max_abs_diff})")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
