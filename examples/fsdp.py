"""SWGL under FSDP2 (``fully_shard``), with a distributed checkpoint. Needs torch >= 2.6.

    torchrun --standalone --nproc_per_node=2 examples/fsdp.py           # CPU (gloo) or GPUs (NCCL)

The params are DTensors sharded on dim 0 and SWGL's state is created like them, so each rank
holds 1/world of it. SWGL runs its rules on the local shards and all-reduces only the
per-tensor statistics its rule sums over a group (the default's mean importance at a shift,
its detector's signal) and the non-finite flag. The optimizer state (AdamW's and
SWGL's ``swgl_*`` tensors) saves and loads through ``torch.distributed.checkpoint``, and can
be loaded at another world size (the checkpoint is resharded on load).
"""

import argparse
import os
import tempfile

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn as nn
from torch.distributed.checkpoint.state_dict import (
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

from swgl import SWGL


def build(device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4)).to(device)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)  # one all-gather / reduce-scatter unit per layer
    return fully_shard(model)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--checkpoint", default=None, help="folder (default: a temporary one)")
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)

    model = build(device)
    opt = SWGL.wrap(torch.optim.AdamW(model.parameters(), lr=1e-3))
    gen = torch.Generator().manual_seed(rank)
    teacher = torch.randn(32, 4, generator=torch.Generator().manual_seed(0)).to(device)
    for step in range(args.steps):
        x = torch.randn(16, 32, generator=gen).to(device)
        loss = nn.functional.mse_loss(model(x), x @ teacher)
        loss.backward()
        opt.step()
        opt.zero_grad()
        if rank == 0 and step % 10 == 0:
            print(f"step {step:3d}  loss {loss.item():.4f}")

    for name, p in model.named_parameters():
        s = opt.state[p]["stability"]
        print(f"rank {rank}: {name} param {tuple(p.shape)} -> SWGL state shard "
              f"{tuple(s.to_local().shape)} {s.placements}")

    folder = [(args.checkpoint or tempfile.mkdtemp()) if rank == 0 else None]
    dist.broadcast_object_list(folder)  # every rank writes its shards into one folder
    dcp.save({"optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=folder[0])

    # Resume: a fresh model and optimizer, then load (any world size can load it).
    model2 = build(device)
    opt2 = SWGL.wrap(torch.optim.AdamW(model2.parameters(), lr=1e-3))
    state = get_optimizer_state_dict(model2, opt2)
    dcp.load({"optim": state}, checkpoint_id=folder[0])
    set_optimizer_state_dict(model2, opt2, state)
    same = all(
        torch.equal(opt.state[p]["stability"].to_local(), opt2.state[q]["stability"].to_local())
        for p, q in zip(model.parameters(), model2.parameters())
    )
    print(f"rank {rank}: SWGL state restored from {folder[0]}: {same}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
