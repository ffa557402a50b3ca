"""swgl.stats: per-layer summaries must match what a real step does to the gradients."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from swgl import RULES, SWGL, SWGLWrapper
from swgl.stats import (
    SCALES,
    StatsHistory,
    _quantiles,
    find_swgl,
    layer_stats,
    quantile_key,
    to_scalars,
    total,
)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3))


def _backward(model: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 6, generator=gen)
    y = torch.randint(0, 3, (16,), generator=gen)
    nn.functional.cross_entropy(model(x), y).backward()


def test_every_rule_has_a_scale():
    assert set(SCALES) == set(RULES)


@pytest.mark.parametrize("foreach", [True, False])
@pytest.mark.parametrize("rule", sorted(r for r in RULES if "grad" in RULES[r].modes))
def test_scale_matches_the_step(rule, foreach):
    """mean_scale and the limit fractions are those of the factor the last step applied: to
    the bit of a group constant, v4's progress rescale ``rho`` (in [1, max_boost]), which
    depends on the step's grads and which stats does not report (``rho`` 1 for the others)."""
    model = _model()
    max_boost = 3.0  # small, so that elements reach both limits
    # v4 damps only with lambda_reg > 0 (at 0 its factor is 1 and the check below compared 1
    # with 1); the seed's rules and v2 read no lambda_reg in their factor
    lambda_reg = 3.0 if rule == "v4" else 0.0
    swgl = SWGL(model.parameters(), alpha=0.9, lambda_reg=lambda_reg, max_boost=max_boost,
                rule=rule, mode="grad", foreach=foreach)
    for seed in range(6):
        model.zero_grad()
        _backward(model, seed)
        before = [p.grad.clone() for p in model.parameters()]
        swgl.step()
    stats = layer_stats(swgl, model)
    assert list(stats) == [name for name, _ in model.named_parameters()]
    saw_boost = saw_damping = saw_scaled = False
    rho = None
    for (name, p), g0 in zip(model.named_parameters(), before):
        nonzero = g0 != 0
        ratio = (p.grad / g0)[nonzero]
        saw_scaled |= bool(((ratio - 1).abs() > 1e-3).any())
        s = stats[name]
        assert s.step == 6 and s.numel == p.numel()
        rho = ratio.mean().item() / s.mean_scale if rho is None else rho   # one per group
        assert s.mean_scale * rho == pytest.approx(ratio.mean().item(), rel=1e-4)
        ratio = ratio / rho
        n = g0.numel()
        assert nonzero.all() or rule != "v2"  # dense grads here, so ratios cover every element
        at_boost = (ratio >= max_boost * (1 - 1e-5)).sum().item() / n
        at_damping = (ratio <= (1 + 1e-5) / max_boost).sum().item() / n
        assert s.at_boost == pytest.approx(at_boost, abs=1.5 / n)
        assert s.at_damping == pytest.approx(at_damping, abs=1.5 / n)
        saw_boost |= s.at_boost > 0
        saw_damping |= s.at_damping > 0
    assert saw_scaled   # the step changed the grads: the comparison above was not vacuous
    if rule == "v4":
        assert 1.0 <= rho <= max_boost * (1 + 1e-5) and saw_damping
    else:
        assert rho == pytest.approx(1.0, rel=1e-5)
    if rule == "v2":
        assert saw_boost and saw_damping


@pytest.mark.parametrize("rule", sorted(RULES))
def test_quantiles_are_of_the_stability_the_rule_reads(rule):
    model = _model()
    alpha = 0.9
    opt = SWGL.wrap(torch.optim.SGD(model.parameters(), lr=0.01), alpha=alpha, rule=rule)
    for seed in range(3):
        opt.zero_grad()
        _backward(model, seed)
        opt.step()
    qs = (0.0, 0.1, 0.5, 0.9, 1.0)
    before = {k: v.clone() for p in model.parameters() for k, v in opt.state[p].items()}
    stats = layer_stats(opt, dict(model.named_parameters()), quantiles=qs)
    after = {k: v for p in model.parameters() for k, v in opt.state[p].items()}
    assert all(torch.equal(before[k], after[k]) for k in before)  # reading changes nothing
    for name, p in model.named_parameters():
        s = opt.stability(p)
        seen = s / (1 - alpha**3) if rule in ("v2", "v3") else s
        expected = torch.quantile(seen.flatten(), torch.tensor(qs)).tolist()
        assert list(stats[name].quantiles.values()) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("n", [1, 2, 7, 1000])
def test_quantiles_equal_torch_quantile(n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    qs = (0.0, 0.05, 0.33, 0.5, 0.999, 1.0)
    expected = torch.quantile(x, torch.tensor(qs)).tolist()
    assert _quantiles(x, qs).tolist() == pytest.approx(expected, rel=1e-5)


def test_names_default_missing_state_and_groups():
    model = _model()
    extra = nn.Parameter(torch.randn(4))
    first, *rest = model.parameters()
    opt = SWGLWrapper([{"params": rest}, {"params": [first, extra], "swgl_max_boost": 2.0}],
                      base=torch.optim.SGD, base_kwargs={"lr": 0.1})
    assert layer_stats(opt) == {}  # no step yet
    _backward(model, 0)
    opt.step()
    unnamed = layer_stats(opt)
    assert list(unnamed) == ["group0.param0", "group0.param1", "group0.param2", "group1.param0"]
    named = layer_stats(opt, list(model.named_parameters()))
    assert "0.weight" in named and "group1.param1" not in named  # extra never had a grad
    assert named["0.weight"] == unnamed["group1.param0"]


def test_scalars_and_totals():
    model = _model()
    opt = SWGL.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    _backward(model, 0)
    opt.step()
    stats = layer_stats(opt, model, quantiles=(0.5,))
    scalars = to_scalars(stats, prefix="opt")
    assert scalars["opt/0.weight/stability_p50"] == stats["0.weight"].quantiles[0.5]
    assert scalars["opt/2.bias/mean_scale"] == stats["2.bias"].mean_scale
    n = sum(p.numel() for p in model.parameters())
    weighted = sum(s.mean_scale * s.numel for s in stats.values()) / n
    assert scalars["opt/all/mean_scale"] == pytest.approx(weighted)
    assert len(scalars) == 4 * 4 + 3
    assert total({}) == {}
    assert quantile_key(0.05) == "stability_p5" and quantile_key(0.5) == "stability_p50"


def test_find_swgl_through_framework_wrappers():
    model = _model()
    opt = SWGL.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    wrapped = SimpleNamespace(optimizer=SimpleNamespace(_optimizer=opt))
    assert find_swgl(wrapped) is opt
    with pytest.raises(TypeError, match="optimizer must be an SWGL"):
        find_swgl(torch.optim.SGD(model.parameters(), lr=0.1))


@pytest.mark.parametrize("rule", ["v6", "v4", "v2"])
def test_swgl_optim_stats_equal_the_wrappers(rule):
    """swgl.optim keeps the wrapper's per-param state (as ``swgl_<name>``): its stats, through
    layer_stats, ``stats()`` and a framework's wrapper, are the wrapper's on the same run."""
    import swgl.optim

    models = [_model(), _model()]
    kw = dict(lr=0.05, momentum=0.9)
    opt = swgl.optim.SGD(models[0].parameters(), **kw, swgl=dict(rule=rule, alpha=0.9))
    ref = SWGL.wrap(torch.optim.SGD(models[1].parameters(), **kw), rule=rule, alpha=0.9)
    assert layer_stats(opt, models[0]) == {} and opt.stats() == {}   # no step yet
    with pytest.raises(KeyError, match="no SWGL state yet"):
        opt.stability(models[0][0].weight)
    with pytest.raises(KeyError, match="not one of the optimizer's params"):
        opt.stability(torch.zeros(3))
    for seed in range(4):
        for model, o in zip(models, (opt, ref)):
            o.zero_grad()
            _backward(model, seed)
            o.step()
    mine, theirs = layer_stats(opt, models[0]), layer_stats(ref, models[1])
    assert list(mine) == list(theirs) == [name for name, _ in models[0].named_parameters()]
    for name, s in mine.items():
        t = theirs[name]
        assert (s.numel, s.step) == (t.numel, t.step) == (t.numel, 4)
        assert list(s.quantiles.values()) == pytest.approx(list(t.quantiles.values()), rel=1e-6)
        assert (s.at_boost, s.at_damping) == (t.at_boost, t.at_damping)
        assert s.mean_scale == pytest.approx(t.mean_scale, rel=1e-6)
    assert opt.stats(models[0]) == mine
    assert opt.stats(models[0], quantiles=(0.5,))["0.bias"].quantiles.keys() == {0.5}
    p = models[0][0].weight
    assert opt.stability(p) is opt.state[p]["swgl_stability"]
    assert find_swgl(SimpleNamespace(optimizer=SimpleNamespace(_optimizer=opt))) is opt


@pytest.mark.parametrize("bad", [(1.5,), (-0.1,), ("0.5",), (True,)])
def test_bad_quantiles(bad):
    opt = SWGL(_model().parameters())
    with pytest.raises(ValueError, match="quantiles"):
        layer_stats(opt, quantiles=bad)


def test_bad_names():
    opt = SWGL(_model().parameters())
    with pytest.raises(TypeError, match="names"):
        layer_stats(opt, names=3)


def test_history_pads_late_layers_and_is_json():
    model = _model()
    late = nn.Parameter(torch.ones(3))
    opt = SWGL.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    history = StatsHistory(quantiles=(0.5, 0.95))
    _backward(model, 0)
    opt.step()
    history.record(1, opt, model)
    opt.add_param_group({"params": [late]})
    (late.sum() ** 2).backward()
    opt.step()
    history.record(2, opt, {**dict(model.named_parameters()), "late": late})
    out = json.loads(json.dumps(history.to_dict()))
    assert out["step"] == [1, 2] and out["quantiles"] == [0.5, 0.95]
    assert out["layers"]["late"][0] is None and len(out["layers"]["late"][1]) == 2
    assert out["at_boost"]["late"][0] is None and out["mean_scale"]["0.weight"][1] > 0
    assert len(out["layers"]["0.weight"]) == 2


def _history() -> dict:
    model = _model()
    opt = SWGL.wrap(torch.optim.SGD(model.parameters(), lr=0.1), max_boost=3.0)
    history = StatsHistory()
    for step in range(1, 5):
        opt.zero_grad()
        _backward(model, step)
        opt.step()
        history.record(step, opt, model)
    return history.to_dict()


def test_plot_cell_and_run(tmp_path):
    pytest.importorskip("matplotlib")
    from swgl.plots import plot_cell, plot_run

    stability = _history()
    stability["layers"]["late"] = [None, None, [0.1, 0.2, 0.3, 0.4, 0.5], [0.1, 0.2, 0.3, 0.4, 0.5]]
    cell = {"scenario": "permuted", "method": "swgl-sgd", "seed": 0, "stability": stability,
            "curve": {"step": [2, 4], "acc": [[0.5], [0.4, 0.9]]}}
    png = plot_cell(cell, tmp_path / "one.png", layers=["0.weight", "late"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The harness's own record: quantiles only, no limit fractions.
    run = tmp_path / "run"
    (run / "cells").mkdir(parents=True)
    bare = {"step": stability["step"], "quantiles": stability["quantiles"],
            "layers": {"0.weight": stability["layers"]["0.weight"]}}
    (run / "cells" / "a.json").write_text(json.dumps({"stability": bare, "curve": cell["curve"]}))
    (run / "cells" / "b.json").write_text(json.dumps({"curve": cell["curve"], "stability": {}}))
    paths = plot_run(run)
    assert [p.name for p in paths] == ["a.png", "b.png"] and all(p.stat().st_size for p in paths)


def test_plot_errors(tmp_path):
    pytest.importorskip("matplotlib")
    from swgl.plots import plot_cell, plot_run

    with pytest.raises(ValueError, match="neither"):
        plot_cell({"stability": {}, "curve": {"step": []}}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="not in the record"):
        plot_cell({"stability": _history()}, tmp_path / "x.png", layers=["nope"])
    with pytest.raises(FileNotFoundError, match="bench run"):
        plot_run(tmp_path)
