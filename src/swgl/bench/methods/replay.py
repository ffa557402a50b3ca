"""Experience replay: each step trains on the batch plus as many samples from a reservoir."""

from __future__ import annotations

from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import Tensor

from swgl.bench.methods._buffer import ReservoirBuffer, make_generator
from swgl.bench.methods.base import Method, MethodSpec


class Replay(Method):
    hparams = MappingProxyType({"memory": 200})

    def __init__(self, model, optimizer, ctx, options) -> None:
        super().__init__(model, optimizer, ctx, options)
        self.buffer = ReservoirBuffer(int(self.memory), make_generator())

    def task_loss(self, x: Tensor, y: Tensor, tids: Tensor) -> Tensor:
        if len(self.buffer):
            bx, by, bt = self.buffer.sample(self.ctx.batch_size)
            x, y, tids = torch.cat([x, bx]), torch.cat([y, by]), torch.cat([tids, bt])
        return F.cross_entropy(self.logits(x, tids), y)

    def after_step(self, x: Tensor, y: Tensor, tids: Tensor) -> None:
        self.buffer.add(x, y, tids)

    def state_tensors(self):
        return self.buffer.tensors()


#: The buffer size is fixed (a memory budget), so only the learning rate is tuned.
SPECS = (MethodSpec("replay", Replay, "sgd", description="reservoir experience replay"),)
