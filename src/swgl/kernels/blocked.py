"""Cache-blocked foreach, for the CPU.

On the CPU a ``torch._foreach_*`` op runs one tensor at a time, each a full pass over memory,
and a rule takes about thirteen of them: for large tensors the step is bound by memory
bandwidth, thirteen times over. Here every contiguous tensor is cut into chunks of
:data:`CHUNK` elements and the rule's own foreach runs over the list of chunks, so a chunk's
thirteen passes stay in cache.

Per-tensor statistics (v2's sums) come out exact: the chunks of a tensor are treated as its
shards (see :class:`swgl.rules.Context`): ``reduce_sum`` adds the partial sums of a tensor's
chunks (then applies the caller's ``reduce_sum``), and ``numels`` gives each chunk its
tensor's global element count.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from swgl.rules import RULES, Context, Hyper

__all__ = ["BLOCKED", "CHUNK", "DEFAULT_RULES", "worth_it"]

#: elements per chunk: 64 KiB of fp32, so the ~6 live chunks of a rule fit in L2, and below
#: torch's intra-op grain size (32768), so no op wakes the thread pool for one chunk
CHUNK = 16384


def worth_it(params: list[Tensor]) -> bool:
    """True when blocking pays: plain CPU tensors, some larger than a chunk."""
    plain = (Tensor, torch.nn.Parameter)  # not a subclass such as DTensor
    return all(type(p) in plain and p.device.type == "cpu" for p in params) and any(
        p.numel() > CHUNK for p in params
    )


def _chunks(t: Tensor, splittable: bool) -> list[Tensor]:
    return list(t.view(-1).split(CHUNK)) if splittable else [t]


def _blocked(rule: str, params, grads, state, steps, hp: Hyper, ctx: Context) -> None:
    owner: list[int] = []
    lists: tuple[list[Tensor], ...] = ([], [], [], [])
    for i, tensors in enumerate(zip(params, grads, state["stability"])):
        splittable = all(t.is_contiguous() for t in tensors)
        parts = [_chunks(t, splittable) for t in tensors]
        owner += [i] * len(parts[0])
        for out, part in zip(lists, parts):
            out += part
        lists[3].extend([steps[i]] * len(parts[0]))
    index = torch.tensor(owner)

    def reduce_sum(partials: Tensor) -> Tensor:
        totals = torch.zeros(len(params), dtype=torch.float64, device=partials.device)
        totals.index_add_(0, index.to(partials.device), partials.double())
        return ctx.reduce_sum(totals.to(partials.dtype))[index.to(partials.device)]

    numels = tuple(ctx.numel(i, params[i]) for i in owner)
    chunk_ctx = Context(grad_scale=ctx.grad_scale, reduce_sum=reduce_sum, numels=numels)
    chunked, chunk_grads, chunk_state, chunk_steps = lists
    return RULES[rule].before.foreach(chunked, chunk_grads, {"stability": chunk_state}, chunk_steps,
                                      hp, chunk_ctx)


#: rule name -> cache-blocked foreach implementation (the rules' signature)
#: (not v4: its one sum over the whole group would count a tensor's total once per chunk)
BLOCKED: dict[str, Callable[..., None]] = {name: partial(_blocked, name) for name in RULES
                                           if name != "v4"}
#: the rules ``swgl()`` runs blocked on the CPU: the elementwise ones (bit-exact with foreach,
#: 2.5-3x faster on a 10M-param MLP). v2's chunked reductions measured between 0.4x and 1.9x
#: on shared CPUs (docs/results.md), so v2 keeps whole-tensor foreach.
DEFAULT_RULES = ("v1", "v1-paper")
