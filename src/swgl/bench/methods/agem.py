"""A-GEM (Chaudhry et al. 2019): project the gradient when it conflicts with past tasks.

The episodic memory is a reservoir over the samples of *finished* tasks (filled at each task
end), so the reference gradient never includes the current task.
"""

from __future__ import annotations

from types import MappingProxyType

import torch
from torch import Tensor

from swgl.bench.methods._buffer import ReservoirBuffer, make_generator
from swgl.bench.methods.base import Batches, Method, MethodSpec


class AGEM(Method):
    hparams = MappingProxyType({"memory": 200, "ref_batch": 64})

    def __init__(self, model, optimizer, ctx, options) -> None:
        super().__init__(model, optimizer, ctx, options)
        self.buffer = ReservoirBuffer(int(self.memory), make_generator())

    def observe(self, x: Tensor, y: Tensor, tids: Tensor) -> Tensor:
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.task_loss(x, y, tids)
        if len(self.buffer):
            ref = torch.autograd.grad(self.task_loss(*self.buffer.sample(int(self.ref_batch))),
                                      params)
            grads = torch.autograd.grad(loss, params)
            dot = sum((g * r).sum() for g, r in zip(grads, ref))
            if dot < 0:
                scale = dot / sum(r.square().sum() for r in ref)
                grads = [g - scale * r for g, r in zip(grads, ref)]
            for p, g in zip(params, grads):
                p.grad = g
        else:
            loss.backward()
        self.optimizer.step()
        return loss.detach()

    def end_task(self, t: int, batches: Batches) -> None:
        for x, y, tids in batches():
            self.buffer.add(x, y, tids)

    def state_tensors(self):
        return self.buffer.tensors()


#: The memory size is fixed (a memory budget), so only the learning rate is tuned.
SPECS = (MethodSpec("agem", AGEM, "sgd", description="averaged gradient episodic memory"),)
