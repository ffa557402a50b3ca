"""TensorBoard: log_stats writes every scalar of to_scalars, and stability histograms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from swgl import SWGL  # noqa: E402
from swgl.integrations.tensorboard import log_histograms, log_stats  # noqa: E402
from swgl.stats import to_scalars  # noqa: E402


def test_log_stats_and_histograms(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    unused = nn.Parameter(torch.ones(2))
    opt = SWGL.wrap(torch.optim.SGD([*model.parameters(), unused], lr=0.1))
    writer = SummaryWriter(tmp_path)
    logged = []
    for step in (1, 2):
        opt.zero_grad()
        model(torch.randn(5, 3)).sum().backward()
        opt.step()
        logged.append(log_stats(writer, opt, model, step, histograms=True, prefix="opt"))
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "histograms": 0})
    events.Reload()
    tags = events.Tags()
    assert set(tags["scalars"]) == set(to_scalars(logged[-1], "opt"))
    assert set(tags["histograms"]) == {f"opt/{n}/stability" for n, _ in model.named_parameters()}
    last = events.Scalars("opt/0.weight/mean_scale")
    assert [e.step for e in last] == [1, 2]
    assert last[-1].value == pytest.approx(logged[-1]["0.weight"].mean_scale, rel=1e-6)
    hist = events.Histograms("opt/2.bias/stability")[-1].histogram_value
    assert hist.num == 1 and hist.max == pytest.approx(opt.stability(model[2].bias).item())


def test_log_histograms_rejects_other_optimizers(tmp_path):
    sgd = torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1)
    with pytest.raises(TypeError, match="optimizer must be an SWGL"):
        log_histograms(SummaryWriter(tmp_path), sgd)
