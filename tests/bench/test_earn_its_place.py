"""benchmarks/earn_its_place.py: the grid presets and the peers' wiring (issue 12).

The data is synthetic (the script's loader is bypassed), so the test needs no Fashion-MNIST.
"""

import json
from collections import Counter

import numpy as np
import pytest
import torch

from benchmark_scripts import load
from swgl.bench.methods import METHODS
from swgl.bench.methods.l2_init import L2Init

E = load("earn_its_place")


@pytest.fixture
def fake_data(monkeypatch):
    """50 200 training and 200 test images whose class is the argmax of 10 pixels."""
    g = torch.Generator().manual_seed(0)
    xtr, xte = torch.rand(50200, 784, generator=g), torch.rand(200, 784, generator=g)
    data = (xtr, xtr[:, :10].argmax(1), xte, xte[:, :10].argmax(1))
    monkeypatch.setitem(E._DATA, E.DATA_DIR, data)
    return data


def test_default_grid_is_unchanged_and_has_no_peers():
    grid = E.default_grid()
    assert len(grid) == 222
    assert {r["scenario_name"] for r in grid} == {"short", "long", "rotated", "splitdom"}
    assert not {r["method"] for r in grid} & set(E.PEERS)


def test_device_grid_puts_long_first_and_tunes_every_peer_on_lr_and_strength():
    grid = E.device_grid()
    assert len(grid) == len({json.dumps(r, sort_keys=True) for r in grid}) == 534
    # (a) first: long, plain and v4, SGD and Adam, 3 lrs x 3 seeds
    head = grid[:36]
    assert {(r["scenario_name"], r["method"]) for r in head} == {("long", "plain"),
                                                                ("long", "swgl")}
    assert Counter((r["method"], r["opt"]) for r in head) == {
        (m, o): 9 for m in ("plain", "swgl") for o in ("sgd", "adam")}
    # (b) next: short10k, plain and v4 first, then all 7 peers; (c) the peers on long last
    scen = [r["scenario_name"] for r in grid]
    assert scen[36:336] == ["short10k"] * 300 and scen[336:] == ["long"] * 198
    assert [r["method"] for r in grid[36:84]] == ["plain"] * 24 + ["swgl"] * 24
    short = [r for r in grid if r["scenario_name"] == "short10k"]
    lrs = E.DEVICE_LRS["short10k"]
    for method in E.PEERS:
        runs = [r for r in short if r["method"] == method]
        strengths = E.strength_points(method)
        assert len(strengths) == 2
        tune_grid = METHODS[E.PEERS[method]["sgd"]].strength_grid(None)
        for point in strengths:                   # the harness's own tuning values
            assert all(v in tune_grid[k] for k, v in point.items()), (method, point)
        for opt in E.PEERS[method]:
            rows = [r for r in runs if r["opt"] == opt]
            want = E.peer_lrs(method, lrs[opt])
            assert Counter((r["lr"], json.dumps(r["strength"]), r["seed"]) for r in rows) == {
                (lr, json.dumps(s), seed): 1 for lr in want for s in strengths
                for seed in (0, 1, 2)}
    assert E.peer_lrs("upgd", (0.015, 0.03)) == (0.03, 0.06)            # 2x: the 1 - s gate
    assert E.peer_lrs("mesu", lrs["sgd"]) == (1.0, 2.0, 4.0)            # its own lr grid
    assert E.peer_lrs("stream-ewc", lrs["adam"]) == lrs["adam"]
    # the peers on their own optimizer sit in the SGD rows only
    assert {r["opt"] for r in grid if r["method"] in ("upgd", "mesu", "bgd")} == {"sgd"}
    # the long peers come one whole method after another
    tail = [r["method"] for r in grid[336:]]
    assert [m for i, m in enumerate(tail) if i == 0 or tail[i - 1] != m] == list(E.PEER_ORDER)


def test_strong_grid_never_fades_and_runs_adam_first():
    grid = E.v5_strong_grid()
    assert len(grid) == len({json.dumps(r, sort_keys=True) for r in grid}) == 252
    opts = [r["opt"] for r in grid]
    assert opts.index("sgd") > max(i for i, o in enumerate(opts) if o == "adam")
    for opt, points in E.STRONG_POINTS.items():
        for c in points:
            runs = [r for r in grid if r["method"] == f"swgl-v5-c{c:g}-h0" and r["opt"] == opt]
            assert len(runs) == (60 if opt == "adam" else 36)
            assert all(r["swgl"] == {"rule": "v5", "consolidation": c,
                                     "consolidation_horizon": 0.0} for r in runs)


def _points_grid(grid, total: int, rule: str, points) -> None:
    """A grid of (strength, horizon) points: ``total`` distinct runs, ``long`` first, 72 runs
    per point passing its options to ``rule``."""
    assert len(grid) == len({json.dumps(r, sort_keys=True) for r in grid}) == total
    scen = [r["scenario_name"] for r in grid]
    assert scen.index("short") > max(i for i, s in enumerate(scen) if s == "long")
    for c, h in points:
        runs = [r for r in grid if r["method"] == f"swgl-{rule}-c{c:g}-h{h:g}"]
        assert len(runs) == 72
        assert all(r["swgl"] == {"rule": rule, "consolidation": c, "consolidation_horizon": h}
                   for r in runs)


def test_horizon_grid_passes_each_point_and_runs_the_default_unchanged():
    grid = E.v5_horizon_grid()
    _points_grid(grid, 300, "v5", E.HORIZON_POINTS)
    default = [r for r in grid if r["method"] == "swgl"]
    assert len(default) == 9 and all("swgl" not in r for r in default)   # the library's own


def test_fade_grids_pass_v6_each_point_on_its_lr_grid_long_first():
    grid = E.fade_grid()
    _points_grid(grid, 360, "v6", E.FADES)
    assert all(r["lr"] in E.V6_LRS[r["scenario_name"]][r["opt"]] for r in grid)
    seeds = E.fade_adam_long_grid()
    assert {r["seed"] for r in seeds} == set(range(3, 10)) and len(seeds) == 21
    assert {(r["method"], r["opt"], r["scenario_name"]) for r in seeds} == {
        ("swgl-v6-c{:g}-h{:g}".format(*E.FADE_ADAM_LONG), "adam", "long")}


def test_peer_specs_are_the_harness_methods():
    assert E.peer_spec("stream-ewc", "adam") is METHODS["stream-ewc-adam"]
    assert E.peer_spec("upgd", "sgd") is METHODS["upgd"]
    l2 = E.peer_spec("l2-init", "sgd")
    assert l2.strategy is L2Init and l2.optimizer == "sgd"
    assert E.peer_spec("l2-init", "adam") is METHODS["l2-init"]
    assert [E.own_optimizer(m) for m in ("stream-si", "upgd", "mesu", "bgd")] == [
        None, "upgd", "mesu", "bgd"]


def test_a_peer_runs_through_the_harness_step_with_its_strength(fake_data):
    cfg = dict(E.smoke_grid()[4], tasks=2, n=512)           # stream-ewc, SGD
    assert cfg["method"] == "stream-ewc"
    weak = E.run_one(dict(cfg, strength={"lam": 0.0}))
    plain = E.run_one(dict(cfg, method="plain"))
    strong = E.run_one(dict(cfg, strength={"lam": 1e6}))
    # lam = 0: the pull vanishes and the harness step is the plain SGD step
    np.testing.assert_allclose(weak["val"], plain["val"], atol=1e-6)
    assert strong["val"] != weak["val"]
    assert np.asarray(weak["val"]).shape == (2, 2)


def test_the_boundary_reference_is_ewc_given_each_boundary(fake_data, monkeypatch):
    grid = E.boundary_grid()
    assert len(grid) == 378
    assert {r["method"] for r in grid} == {"ewc-boundaries", "si-boundaries"}
    assert {r["scenario_name"] for r in grid} == {"long", "short", "rotated"}
    ewc = [r for r in grid if r["method"] == "ewc-boundaries"]
    assert {r["strength"]["lam"] for r in ewc if r["opt"] == "sgd"} == {1.0, 10.0, 100.0}
    assert E.peer_spec("si-boundaries", "adam").strategy is METHODS["si"].strategy
    assert E.peer_spec("ewc-boundaries", "sgd").strategy is METHODS["ewc"].strategy
    cfg = dict(grid[0], tasks=3, n=256, epochs=1)
    ends = []
    real = METHODS["ewc"].strategy.end_task
    monkeypatch.setattr(METHODS["ewc"].strategy, "end_task",
                        lambda self, t, batches: ends.append((t, sum(len(x) for x, _, _ in
                                                                     batches()))) or
                        real(self, t, batches))
    weak = E.run_one(dict(cfg, strength={"lam": 0.0}))
    plain = E.run_one(dict(cfg, method="plain"))
    strong = E.run_one(dict(cfg, strength={"lam": 1e3}))
    assert ends[:3] == [(0, 256), (1, 256), (2, 256)]      # told every boundary, its data
    np.testing.assert_allclose(weak["val"], plain["val"], atol=1e-6)   # lam 0: plain SGD
    assert strong["val"] != weak["val"]


def test_smoke_grid_runs_and_reports_peers(fake_data, tmp_path):
    grid = E.smoke_grid()
    assert {r["method"] for r in grid} == {"plain", "swgl", "stream-ewc", "mesu"}
    out = tmp_path / "run"
    E.run(grid[:-1], out, jobs=1)                # one run short, as if cut by a time limit
    results = json.loads((out / "results.json").read_text())
    assert len(results) == len(grid) - 1 and all(r["finite"] for r in results)
    assert json.loads((out / "grid.json").read_text()) == grid[:-1]
    table = E.report(results, tmp_path / "rep", grid=grid)
    rows = {line.split(" | ")[2]: line for line in table.splitlines()[2:]}
    assert "mesu (own optimizer, MESU) (partial: 3/4 runs)" in rows
    assert rows["stream-ewc"].split(" | ")[4] in ("lam=100", "lam=1000")    # its strength
    assert sum(1 for line in table.splitlines() if "| stream-ewc |" in line) == 2  # SGD, Adam
    tuned = json.loads((tmp_path / "rep" / "earn_its_place_tuned.json").read_text())
    assert {r["method"] for r in tuned} == {"plain", "swgl", "stream-ewc", "mesu"}
    assert (tmp_path / "rep" / "earn_its_place_frontier.png").stat().st_size > 10_000


def test_the_oracle_fires_at_each_new_tasks_step_and_only_there(fake_data):
    """``oracle=k``: the shift at step k of every task after the first (task j starts at
    step 10 j + 1 here; ``t_last`` records each shift's step), whatever the detector says;
    a run without it gets the detector back."""
    cfg = dict(E.method_runs("small", "swgl-v6", {"sgd": (0.1,)}, seeds=(0,),
                             swgl={"rule": "v6"})[0], tasks=3, n=640)
    seen = []
    real = E._oracle_advance

    def record(n, det, found, kernel):
        new, shift = real(n, det, found, kernel)
        if bool(shift):
            seen.append(int(new[3]))
        return new, shift
    try:
        E._oracle_advance = record
        E.run_one(dict(cfg, oracle=0))
        assert seen == [11, 21]
        seen.clear()
        E.run_one(dict(cfg, oracle=3))
        assert seen == [14, 24]
    finally:
        E._oracle_advance = real
    assert E.consolidation._advance is E.ADVANCE     # restored after each run


def test_a_run_restores_the_rules_module_state_even_when_it_fails(fake_data):
    """A config's detector constants, oracle and anchor hold during its run only."""
    own = (E.consolidation.SHIFT_RATIO, E.consolidation.REFRACTORY, E.consolidation.WARMUP,
           E.consolidation._advance, E.synaptic._consolidate, E.synaptic._importance,
           E.synaptic.MIN_SEGMENT, E.importance._total)
    cfg = dict(E.method_runs("small", "swgl-v6", {"sgd": (0.1,)}, seeds=(0,),
                             swgl={"rule": "v6"})[0], tasks=1, n=64)
    with pytest.raises(KeyError):
        E.run_one(dict(cfg, detector=[1.5, 25, 100], oracle=0, anchor="weighted", mix=0.5,
                       method="no-such-method", opt="no-such-optimizer"))
    E.run_one(dict(cfg, detector=[1.5, 25, 100], oracle=0, anchor="weighted", mix=0.5,
                   per_step=True, min_segment=200))
    E.run_one(dict(cfg, tensor_detector=True))
    assert (E.consolidation.SHIFT_RATIO, E.consolidation.REFRACTORY, E.consolidation.WARMUP,
            E.consolidation._advance, E.synaptic._consolidate, E.synaptic._importance,
            E.synaptic.MIN_SEGMENT, E.importance._total) == own


@pytest.mark.parametrize("mix", [0.0, 0.5, 1.0])
def test_the_mixed_importance_has_mean_one_and_its_uniform_part(mix):
    """``(1 - mix) Om / mean(Om) + mix`` over the group: mix 0 is v6's normalised term, 1 the
    uniform control; the mean is 1 either way, so v6's own gain leaves it as it is."""
    g = torch.Generator().manual_seed(0)
    w = [torch.randn(5, 3, generator=g), torch.randn(7, generator=g)]
    mu = [x + 0.1 * torch.randn(x.shape, generator=g) for x in w]
    path = [torch.rand(x.shape, generator=g) for x in w]
    om = E.IMPORTANCE(w, mu, path, "foreach")
    mean = sum(o.sum() for o in om) / 22
    out = E._mixed_importance(mix)(w, mu, path, "foreach")
    assert float(sum(o.sum() for o in out) / 22) == pytest.approx(1.0)
    for o, v in zip(out, om):
        torch.testing.assert_close(o, (1 - mix) * v / mean + mix)
    if mix == 1.0:
        assert all(bool((o == 1).all()) for o in out)


def test_a_detector_of_two_constants_warms_up_for_its_refractory_period():
    """The thirteenth session's configs (ratio, refractory) ran with the warm-up equal to the
    refractory period; three constants set it apart."""
    c = E.consolidation
    with E._variant({"detector": [2.0, 25]}):
        assert (c.SHIFT_RATIO, c.REFRACTORY, c.WARMUP) == (2.0, 25, 25)
    with E._variant({"detector": [1.5, 50, 200]}):
        assert (c.SHIFT_RATIO, c.REFRACTORY, c.WARMUP) == (1.5, 50, 200)
    assert (c.SHIFT_RATIO, c.REFRACTORY, c.WARMUP) == E.DETECTOR


def test_the_weighted_anchor_is_the_importance_weighted_mean_of_the_shifts_weights():
    """Two shifts: v6's consolidation keeps the last weights as the anchor; the weighted
    variant keeps ``(Om_1 w_1 + Om_2 w_2) / (Om_1 + Om_2)`` (each ``Om_i`` normalised to mean
    1, as ``F`` sums them)."""
    from swgl.rules import Context

    w = torch.nn.Parameter(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    state = {"consolidated": [torch.zeros(4)], "anchor": [torch.zeros(4)],
             "path": [torch.tensor([1.0, 0.0, 2.0, 1.0])]}
    shift = torch.tensor(True)
    E._consolidate_weighted([w], state, shift, "foreach", Context())
    om1 = state["consolidated"][0].clone()
    assert torch.equal(state["anchor"][0], w.detach())       # the first: the weights then
    w1 = w.detach().clone()
    with torch.no_grad():
        w.add_(torch.tensor([1.0, 1.0, -1.0, 0.5]))
    state["path"][0].copy_(torch.tensor([0.5, 1.0, 1.0, 0.0]))
    E._consolidate_weighted([w], state, shift, "foreach", Context())
    om2 = state["consolidated"][0] - om1
    expected = (om1 * w1 + om2 * w.detach()) / (om1 + om2)
    torch.testing.assert_close(state["anchor"][0], expected)
    assert not torch.equal(state["anchor"][0], w.detach())    # not v6's last weights
    assert float(state["path"][0].abs().sum()) == 0.0        # the path restarts, as in v6
    no_shift = {k: [t.clone() for t in v] for k, v in state.items()}
    E._consolidate_weighted([w], no_shift, torch.tensor(False), "foreach", Context())
    assert all(torch.equal(a, b) for k in state for a, b in zip(state[k], no_shift[k]))


def test_stored_results_read_gzipped(tmp_path):
    import gzip

    runs = [{"cfg": {"method": "plain"}, "val": [[0.5]]}]
    with gzip.open(tmp_path / "r.json.gz", "wt") as f:
        json.dump(runs, f)
    (tmp_path / "r.json").write_text(json.dumps(runs))
    assert E.read_results(tmp_path / "r.json.gz") == E.read_results(tmp_path / "r.json") == runs


def test_per_step_grid_runs_plain_v6_and_each_strength_on_v6s_lrs():
    grid = E.per_step_grid()
    assert len(grid) == len({json.dumps(r, sort_keys=True) for r in grid}) == 372
    assert grid[0]["scenario_name"] == "long"
    for c in E.PER_STEP:
        runs = [r for r in grid if r["method"] == f"swgl-v6-ps{c:g}"]
        assert len(runs) == 72 and all(r["per_step"] for r in runs)
        assert all(r["swgl"] == {"rule": "v6", "consolidation": c} for r in runs)
        assert all(r["lr"] in E.V6_LRS[r["scenario_name"]][r["opt"]] for r in runs)


def test_min_segment_grid_runs_v7_with_its_floor():
    grid = E.min_segment_grid()
    assert len(grid) == 66 and grid[0]["scenario_name"] == "long"
    assert all(r["swgl"] == {"rule": "v7"} and r["min_segment"] == 200.0 for r in grid)
    assert sum(r["scenario_name"] == "long" for r in grid) == 30   # Adam, 3 lrs, 10 seeds


def test_the_per_step_variant_is_the_library_rule_v7():
    """The study's patched v6 (each shift's term divided by its segment) trains as the rule
    v7 it became, on a stream with a shift, and the patch is gone after its run."""
    def train(rule, **options):
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 4)
        opt = E.SWGL.wrap(torch.optim.SGD(model.parameters(), lr=0.05), rule=rule, **options)
        g = torch.Generator().manual_seed(0)
        w1, w2 = torch.randn(8, 4, generator=g), 3.0 * torch.randn(8, 4, generator=g)
        for t in range(240):
            x = torch.randn(32, 8, generator=g)
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), x @ (w1 if t < 120 else w2)).backward()
            opt.step()
        return model, opt

    with E._variant({"per_step": True}):
        patched, opt = train("v6", consolidation=0.3)
    assert E.synaptic._consolidate is E.CONSOLIDATE
    library, _ = train("v7")
    v6, _ = train("v6", consolidation=0.3)
    assert opt.shifts()[0]["last_shift"] > 120
    torch.testing.assert_close(patched.weight, library.weight, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(patched.weight, v6.weight)     # the division acted


def test_the_per_tensor_detector_sees_a_jump_the_groups_sum_hides():
    """One tensor's g^2 sum jumps tenfold while a larger one stays: the group's ratio stays
    near 1 (v6 finds nothing), the per-tensor detector fires once, at the jump's second step
    (its fast EMA passes twice the slow one then), and not again within its refractory
    period."""
    def run(advance):
        E.PER_TENSOR.clear()
        dets, fired = [torch.zeros(4)], []
        for step in range(1, 121):
            sums = torch.tensor([1.0 if step <= 80 else 10.0, 100.0])
            E.PER_TENSOR["sums"] = sums
            new, shift = advance(sums.sum(), dets, None, False)
            dets[0].copy_(new)
            if bool(shift):
                fired.append(step)
        return fired

    with E._variant({"tensor_detector": True}):
        assert run(E._per_tensor_advance) == [82]
    assert run(E.ADVANCE) == []


def test_tensor_detector_grid_runs_plain_v6_and_the_variant_on_their_lrs():
    grid = E.tensor_detector_grid()
    assert len(grid) == len({json.dumps(r, sort_keys=True) for r in grid}) == 228
    assert grid[0]["scenario_name"] == "rotated"
    runs = [r for r in grid if r["method"] == "swgl-v6-tensor"]
    assert len(runs) == 72 and all(r["tensor_detector"] for r in runs)
    assert all(r["lr"] in E.V6_LRS[r["scenario_name"]][r["opt"]] for r in runs)
