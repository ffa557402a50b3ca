"""avalanche-lib: SWGLPlugin modulates before each update and keeps its state across experiences.

The first tests drive the plugin through the callback order of avalanche's SupervisedTemplate
(zero_grad, forward, backward, before_update, optimizer.step, with the optimizer reset each
experience). The last runs a real avalanche ``Naive`` strategy; it is skipped where avalanche
cannot be imported (its torchvision wheels need a CUDA build of torch).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from swgl import SWGL
from swgl.integrations.avalanche import SWGLPlugin


class MiniStrategy:
    """The part of avalanche's training loop that plugins see."""

    def __init__(self, model: nn.Module, plugins: list) -> None:
        self.model = model
        self.plugins = plugins
        self.optimizer = None

    def _call(self, event: str) -> None:
        for plugin in self.plugins:
            getattr(plugin, event, lambda strategy: None)(self)

    def train_exp(self, x: torch.Tensor, y: torch.Tensor, steps: int = 3) -> None:
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1)  # reset per exp
        self._call("before_training_exp")
        for _ in range(steps):
            self.optimizer.zero_grad()
            nn.functional.cross_entropy(self.model(x), y).backward()
            self._call("before_update")
            self.optimizer.step()


def _data(seed: int, classes: int = 3):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(12, 4, generator=gen), torch.randint(0, classes, (12,), generator=gen)


def test_plugin_modulates_like_the_two_object_pattern():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    reference = nn.Linear(4, 3)
    reference.load_state_dict(model.state_dict())
    plugin = SWGLPlugin(alpha=0.9, max_boost=4.0)
    strategy = MiniStrategy(model, [plugin])
    ref_swgl = SWGL(reference.parameters(), alpha=0.9, max_boost=4.0)
    for exp in range(2):
        x, y = _data(exp)
        strategy.train_exp(x, y)
        base = torch.optim.SGD(reference.parameters(), lr=0.1)
        for _ in range(3):
            base.zero_grad()
            nn.functional.cross_entropy(reference(x), y).backward()
            ref_swgl.step()
            base.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(plugin.swgl.state[p]["stability"], ref_swgl.state[q]["stability"])
        assert float(plugin.swgl.state[p]["step"]) == 6  # carried across the optimizer reset


def test_plugin_adopts_params_of_a_growing_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    plugin = SWGLPlugin()
    strategy = MiniStrategy(model, [plugin])
    strategy.train_exp(*_data(0))
    model.append(nn.Linear(3, 5))  # a dynamic module grew
    strategy.train_exp(*_data(1, classes=5))
    steps = [float(plugin.swgl.state[p]["step"]) for p in model.parameters()]
    assert steps == [6, 6, 3, 3]


def test_plugin_state_round_trip_before_training():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    plugin = SWGLPlugin(alpha=0.9)
    with pytest.raises(RuntimeError, match="no state before"):
        plugin.state_dict()
    MiniStrategy(model, [plugin]).train_exp(*_data(0))
    saved = plugin.state_dict()
    restored = SWGLPlugin(alpha=0.9)
    restored.load_state_dict(saved)  # installed at the first experience
    clone = nn.Linear(4, 3)
    clone.load_state_dict(model.state_dict())
    restored.before_training_exp(MiniStrategy(clone, [restored]))
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(plugin.swgl.state[p]["stability"], restored.swgl.state[q]["stability"])


@pytest.mark.parametrize("options, error", [
    ({"alpha": 1.5}, ValueError),
    ({"rule": "v9"}, ValueError),
    ({"bogus": 1}, TypeError),
])
def test_plugin_checks_options_at_construction(options, error):
    with pytest.raises(error):
        SWGLPlugin(**options)


def _import_avalanche():
    try:
        from avalanche.training import Naive  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"avalanche-lib is not installed ({exc})")
    except RuntimeError as exc:  # torchvision's CUDA wheel on a CPU-only torch
        pytest.skip(f"avalanche-lib cannot be imported beside this torch build ({exc})")


def test_real_avalanche_naive_strategy():
    _import_avalanche()
    from avalanche.benchmarks.scenarios.deprecated.generators import nc_benchmark
    from avalanche.training import Naive

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=gen)
    y = torch.arange(64) % 4
    data = torch.utils.data.TensorDataset(x, y)
    data.targets = y.tolist()
    bench = nc_benchmark(data, data, n_experiences=2, task_labels=False, seed=0)
    torch.manual_seed(0)
    model = nn.Linear(4, 4)
    plugin = SWGLPlugin(alpha=0.9)
    strategy = Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                     train_mb_size=16, train_epochs=1, device="cpu", plugins=[plugin],
                     evaluator=None)
    for exp in bench.train_stream:
        strategy.train(exp)
    assert plugin.swgl is not None
    assert [float(plugin.swgl.state[p]["step"]) for p in model.parameters()] == [4, 4]
