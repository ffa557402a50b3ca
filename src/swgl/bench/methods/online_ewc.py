"""Online EWC (Schwarz et al. 2018): one running Fisher, decayed by ``gamma`` per task."""

from __future__ import annotations

from types import MappingProxyType

from swgl.bench.methods.base import Batches, MethodSpec
from swgl.bench.methods.ewc import EWC


class OnlineEWC(EWC):
    hparams = MappingProxyType({**EWC.hparams, "gamma": 1.0})

    def end_task(self, t: int, batches: Batches) -> None:
        fisher = self.fisher(batches)
        params = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        if self.anchors:
            old, _ = self.anchors[0]
            fisher = {k: self.gamma * old[k] + f for k, f in fisher.items()}
        self.anchors = [(fisher, params)]


SPECS = (MethodSpec("online-ewc", OnlineEWC, "adam", description="online EWC, one running Fisher",
                   tune={"lam": (1e2, 1e3, 1e4)}),)
