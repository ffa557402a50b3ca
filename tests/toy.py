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


#: ``SWGL.wrap``'s options for each of a rule's variants
IMPL_KW = {"single": dict(foreach=False, fused=False), "foreach": dict(foreach=True, fused=False),
           "fused": dict(foreach=True, fused=True)}


def shift_stream(n_steps, shift_at, seed=0):
    """A regression stream whose target map changes at ``shift_at`` (a new task: the loss,
    and with it the gradient norm, jumps)."""
    g = torch.Generator().manual_seed(seed)
    w1, w2 = torch.randn(8, 4, generator=g), 3.0 * torch.randn(8, 4, generator=g)
    for t in range(n_steps):
        x = torch.randn(32, 8, generator=g)
        yield x, x @ (w1 if t < shift_at else w2)


def _run(model, opt, n_steps, shift_at, seed, start=0):
    for t, (x, y) in enumerate(shift_stream(n_steps, shift_at, seed)):
        if t >= start:
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()


def train_across_a_shift(rule, n_steps=240, shift_at=120, impl="foreach", seed=0, **options):
    """``nn.Linear(8, 4)`` trained by SGD (lr 0.05) on :func:`shift_stream`, wrapped by SWGL
    under ``rule`` in its ``impl`` variant (``rule`` None: SGD alone); (model, optimizer)."""
    from swgl import SWGL

    torch.manual_seed(seed)
    model = nn.Linear(8, 4)
    base = torch.optim.SGD(model.parameters(), lr=0.05)
    opt = base if rule is None else SWGL.wrap(base, rule=rule, **IMPL_KW[impl], **options)
    _run(model, opt, n_steps, shift_at, seed)
    return model, opt


def resume_across_a_shift(rule, cut=160, n_steps=240, shift_at=120):
    """(an unbroken run's model, a resumed run's model, its optimizer): the run cut at ``cut``
    steps, past the shift, its checkpoint loaded into new objects and run to the end."""
    import copy

    from swgl import SWGL

    full, _ = train_across_a_shift(rule, n_steps, shift_at)
    part, opt = train_across_a_shift(rule, cut, shift_at)
    model = nn.Linear(8, 4)
    model.load_state_dict(copy.deepcopy(part.state_dict()))
    resumed = SWGL.wrap(torch.optim.SGD(model.parameters(), lr=0.05), rule=rule)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))
    _run(model, resumed, n_steps, shift_at, 0, start=cut)
    return full, model, resumed
