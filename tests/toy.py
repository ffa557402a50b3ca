"""A tiny classification problem shared by the optimizer tests."""

import torch
import torch.nn as nn


def toy_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def toy_batches(n, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=gen), torch.randint(0, 3, (16,), generator=gen))
            for _ in range(n)]


def toy_loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def step_both(opt, base, two_object: bool, no_sync: bool = False) -> None:
    """One step of ``opt`` (and of ``base`` after it in the two-object pattern); with
    ``no_sync``, under ``torch.cuda.set_sync_debug_mode("error")``: any host sync raises."""
    if no_sync:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
        if two_object:
            base.step()
    finally:
        if no_sync:
            torch.cuda.set_sync_debug_mode("default")


def step_across_a_shift_without_host_sync(rule: str, **options):
    """Wrap SGD on CUDA with ``rule``, warm up, then take the steps of a shift (the loss
    scaled 30x) under ``set_sync_debug_mode("error")``: any host sync raises. Returns the
    optimizer."""
    from swgl import SWGL

    model = nn.Linear(64, 64).cuda()
    opt = SWGL.wrap(torch.optim.SGD(model.parameters(), lr=0.01), rule=rule, **options)
    x = torch.randn(16, 64, device="cuda")
    for scale in (1.0,) * 60 + (30.0,) * 5:           # warm up, then a shift
        opt.zero_grad()
        (scale * model(x).square().mean()).backward()
        if scale > 1.0:
            torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return opt
