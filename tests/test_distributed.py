"""SWGL under torch.distributed: DDP, no_sync, local SGD, FSDP2 and DCP, on 2 gloo CPU ranks.

One pair of worker processes (this file run as a script) plays every scenario and saves what
it saw; the tests below read those records. A scenario that raises records its traceback,
so one broken feature fails its own tests, not the others.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import traceback
from contextlib import nullcontext
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

from swgl import SWGL

WORLD = 2
STEPS = 5
SYNC_EVERY = 3

if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)


def _fsdp_available() -> bool:
    try:
        from torch.distributed.fsdp import fully_shard  # noqa: F401  (torch >= 2.6)
        from torch.distributed.tensor import DTensor  # noqa: F401
    except ImportError:
        return False
    return True


# -- the scenarios, run in each rank ------------------------------------------------------------


def _model() -> nn.Module:
    # Uneven shapes on purpose: 9 and 3 rows split 5/4 and 2/1 over two ranks under FSDP2.
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 9), nn.Tanh(), nn.Linear(9, 3))


def _batch(rank: int, step: int, n: int = 8):
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(n, 12, generator=g), torch.randint(0, 3, (n,), generator=g)


def _loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def _report(opt, model=None, **kw):
    from swgl.distributed import check_consistency

    named = model.named_parameters() if model is not None else None
    return asdict(check_consistency(opt, named_params=named, **kw))


def _stabilities(opt):
    return [opt.stability(p).clone() for g in opt.param_groups for p in g["params"]]


def scenario_ddp(rank):
    """Plain DDP: SWGL steps after backward, in both modes; state must be bitwise equal."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    out = {}
    for mode in ("two-object", "wrapper"):
        model = DDP(_model())
        if mode == "two-object":  # the seed's pattern and rule
            base = torch.optim.SGD(model.parameters(), lr=0.1)
            swgl = SWGL(model.parameters(), rule="v1", lambda_reg=0.0)
        else:
            swgl = SWGL.wrap(torch.optim.AdamW(model.parameters(), lr=1e-2))
        for step in range(STEPS):
            _loss(model, _batch(rank, step)).backward()
            swgl.step()
            if mode == "two-object":
                base.step()
            model.zero_grad()
        out[mode] = {"report": _report(swgl, model, params=True), "stab": _stabilities(swgl)}
    return out


def scenario_no_sync(rank):
    """Accumulation under no_sync(): SWGL after the synced backward vs inside the accumulation."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    out = {}
    for where in ("after", "inside"):
        model = DDP(_model())
        base = torch.optim.SGD(model.parameters(), lr=0.1)
        swgl = SWGL(model.parameters())
        for step in range(STEPS):
            for micro in range(3):
                last = micro == 2
                with nullcontext() if last else model.no_sync():
                    _loss(model, _batch(rank, 10 * step + micro)).backward()
                if where == "inside" or last:
                    swgl.step()
            base.step()
            model.zero_grad()
        out[where] = {
            "state": _report(swgl, model),
            "params": _report(swgl, model, params=True),
        }
    return out


def scenario_local_sgd(rank):
    """Local SGD (params averaged every K steps) with StateSync(every=K)."""
    from swgl.distributed import StateSync

    model = _model()
    opt = SWGL.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    sync = StateSync(opt, every=SYNC_EVERY)
    identical = []
    for step in range(2 * SYNC_EVERY):
        _loss(model, _batch(rank, step)).backward()
        opt.step()  # StateSync's post-hook averages the state on every K-th step
        opt.zero_grad()
        if (step + 1) % SYNC_EVERY == 0:
            with torch.no_grad():
                for p in model.parameters():
                    dist.all_reduce(p)
                    p.div_(WORLD)
        identical.append(_report(opt)["identical"])
    sync.remove()
    _loss(model, _batch(rank, 99)).backward()
    opt.step()
    before = _stabilities(opt)
    drifted = _report(opt)["identical"]
    averaged = sync.sync()
    return {
        "identical": identical, "drifted_after_remove": drifted, "averaged": averaged,
        "before": before, "after": _stabilities(opt), "report": _report(opt),
    }


def scenario_local_sgd_shift(rank):
    """Local SGD under the default rule across a shift each rank meets at its own step: the
    check compares every tensor v6 keeps, and StateSync makes them agree."""
    from swgl.distributed import StateSync

    model = _model()
    opt = SWGL.wrap(torch.optim.SGD(model.parameters(), lr=0.1))
    StateSync(opt, every=10)   # attached to opt: its post-hook syncs
    switch = 80 + 30 * rank
    for step in range(160):
        x, y = _batch(rank, step)
        if step >= switch:   # a new task: other inputs, other labels
            x, y = 10 * x.flip(1), (y + 1) % 3
        _loss(model, (x, y)).backward()
        opt.step()
        opt.zero_grad()
        if (step + 1) % 10 == 0:
            with torch.no_grad():
                for p in model.parameters():
                    dist.all_reduce(p)
                    p.div_(WORLD)
        if step == 154:   # between syncs
            apart = _report(opt, model)
    return {"apart": apart, "synced": _report(opt, model), "shifts": opt.shifts(),
            "keys": sorted(opt.state[next(model.parameters())])}


def _shard(model):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    # on the CPU (gloo) wherever the test runs: fully_shard's default mesh is the
    # accelerator's, which moved the model to CUDA on a GPU host and left the batches behind
    mesh = init_device_mesh("cpu", (WORLD,))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def scenario_fsdp(rank):
    """FSDP2: sharded state, numerics equal to one process on the global batch."""
    out = {}
    for foreach in (True, False):
        model = _shard(_model())
        reference = _model()
        opt = SWGL.wrap(torch.optim.AdamW(model.parameters(), lr=1e-2), foreach=foreach)
        ref_opt = SWGL.wrap(torch.optim.AdamW(reference.parameters(), lr=1e-2), foreach=foreach)
        for step in range(STEPS):
            _loss(model, _batch(rank, step)).backward()
            opt.step()
            opt.zero_grad()
            batches = [_batch(r, step) for r in range(WORLD)]
            x, y = (torch.cat(parts) for parts in zip(*batches))
            _loss(reference, (x, y)).backward()
            ref_opt.step()
            ref_opt.zero_grad()
        rows = []
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            stab = opt.state[p]["stability"]
            rows.append({
                "name": name,
                "numel": p.numel(),
                "param_local": p.to_local().numel(),
                "stab_local": stab.to_local().numel(),
                "same_layout": (stab.placements, stab.device_mesh) == (p.placements, p.device_mesh),
                "stab_diff": float((stab.full_tensor() - ref_opt.stability(q)).abs().max()),
                "stab_scale": float(ref_opt.stability(q).abs().max()),
                "param_diff": float((p.detach().full_tensor() - q.detach()).abs().max()),
                "step": float(opt.state[p]["step"]),
            })
        out[foreach] = {"rows": rows, "report": _report(opt, model)}
    return out


def scenario_fsdp_guard(rank):
    """Two-object SWGL on FSDP2; an inf on one rank's shard must skip the step on every rank."""
    model = _shard(_model())
    base = torch.optim.SGD(model.parameters(), lr=0.1)
    swgl = SWGL(model.parameters())
    _loss(model, _batch(rank, 0)).backward()
    swgl.step()
    base.step()
    model.zero_grad()
    _loss(model, _batch(rank, 1)).backward()
    if rank == 1:
        next(iter(model.parameters())).grad.to_local()[0, 0] = float("inf")
    stabilities = [swgl.state[p]["stability"] for p in model.parameters()]
    before = [s.to_local().clone() for s in stabilities]
    swgl.step()
    after = [s.to_local() for s in stabilities]
    return {
        "steps": [float(swgl.state[p]["step"]) for p in model.parameters()],
        "unchanged": all(torch.equal(a, b) for a, b in zip(before, after)),
    }


def scenario_fsdp_storages(rank):
    """Every registered storage format under FSDP2: is its state laid out like the param, and
    does it train ('ok') or raise (the error)?"""
    from swgl.state import STORAGES

    out = {}
    for name, storage in STORAGES.items():
        model = _shard(_model())
        p = next(iter(model.parameters()))
        state = storage.init(p, 0.0)
        layouts = {getattr(t, "placements", None) for t in state.values()}
        try:
            opt = SWGL.wrap(torch.optim.AdamW(model.parameters(), lr=1e-2), storage=name)
            for step in range(2):
                _loss(model, _batch(rank, step)).backward()
                opt.step()
                opt.zero_grad()
            for q in model.parameters():
                if not bool(torch.isfinite(opt.stability(q).to_local()).all()):
                    raise RuntimeError("non-finite stability")
            result = "ok"
        except Exception as exc:  # noqa: BLE001 - recorded for the test to report
            result = f"{type(exc).__name__}: {exc}"
        out[name] = {"elementwise": layouts == {p.placements}, "result": result}
    return out


def scenario_dcp(rank, out_dir: Path):
    """DCP save on 2 ranks, round trip on 2 ranks; the 1-rank load is done by the test."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    model = _shard(_model())
    opt = SWGL.wrap(torch.optim.AdamW(model.parameters(), lr=1e-2))
    for step in range(STEPS):
        _loss(model, _batch(rank, step)).backward()
        opt.step()
        opt.zero_grad()
    ckpt = str(out_dir / "ckpt")
    dcp.save({"optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=ckpt)
    full = {n: opt.state[p]["stability"].full_tensor() for n, p in model.named_parameters()}
    if rank == 0:
        torch.save(full, out_dir / "full_stability.pt")

    model2 = _shard(_model())
    opt2 = SWGL.wrap(torch.optim.AdamW(model2.parameters(), lr=1e-2))
    osd = get_optimizer_state_dict(model2, opt2)
    dcp.load({"optim": osd}, checkpoint_id=ckpt)
    set_optimizer_state_dict(model2, opt2, osd)
    equal = []
    for p, q in zip(model.parameters(), model2.parameters()):
        a, b = opt.state[p], opt2.state[q]
        equal.append(
            torch.equal(a["stability"].to_local(), b["stability"].to_local())
            and torch.equal(a["step"], b["step"])
            and torch.equal(opt.base.state[p]["exp_avg"].to_local(),
                            opt2.base.state[q]["exp_avg"].to_local())
        )
    return {"round_trip_equal": equal, "is_dtensor": type(b["stability"]).__name__}


#: v5 on FSDP2: the inputs grow 20-fold at V5_SHIFT, which its detector takes as a shift
V5_SHIFT, V5_STEPS = 55, 62


def scenario_fsdp_v5(rank, out_dir: Path, rule: str = "v5"):
    """Rule v5 (or v6, the default) on FSDP2 across a detected shift: its state tensors
    sharded like the params, numerics equal to one process on the global batch, and a DCP
    round trip."""
    keys = ("consolidated", "anchor") + (("path",) if rule == "v6" else ())
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    model, reference = _shard(_model()), _model()
    opt = SWGL.wrap(torch.optim.AdamW(model.parameters(), lr=1e-2), rule=rule)
    ref_opt = SWGL.wrap(torch.optim.AdamW(reference.parameters(), lr=1e-2), rule=rule)
    for step in range(V5_STEPS):
        scale = 20.0 if step >= V5_SHIFT else 1.0
        x, y = _batch(rank, step)
        _loss(model, (scale * x, y)).backward()
        opt.step()
        opt.zero_grad()
        x, y = (torch.cat(parts) for parts in zip(*(_batch(r, step) for r in range(WORLD))))
        _loss(reference, (scale * x, y)).backward()
        ref_opt.step()
        ref_opt.zero_grad()
    rows = []
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        a, b = opt.state[p], ref_opt.state[q]
        rows.append({
            "name": name,
            "sharded_like_param": all(
                (a[k].placements, a[k].device_mesh) == (p.placements, p.device_mesh)
                for k in keys),
            "shift_at": float(a["detector"][3]), "ref_shift_at": float(b["detector"][3]),
            "diffs": {k: float((a[k].full_tensor() - b[k]).abs().max())
                      for k in ("stability", *keys)},
            "param_diff": float((p.detach().full_tensor() - q.detach()).abs().max()),
        })
    ckpt = str(out_dir / f"ckpt_{rule}")
    dcp.save({"optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=ckpt)
    model2 = _shard(_model())
    opt2 = SWGL.wrap(torch.optim.AdamW(model2.parameters(), lr=1e-2), rule=rule)
    osd = get_optimizer_state_dict(model2, opt2)
    dcp.load({"optim": osd}, checkpoint_id=ckpt)
    set_optimizer_state_dict(model2, opt2, osd)
    equal = [all(torch.equal(opt.state[p][k].to_local() if k != "detector" else
                             opt.state[p][k], opt2.state[q][k].to_local() if k != "detector"
                             else opt2.state[q][k]) for k in (*keys, "detector"))
             for p, q in zip(model.parameters(), model2.parameters())]
    return {"rows": rows, "round_trip_equal": equal}


def _worker(rank: int, store: str, out_dir: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    scenarios = {
        "ddp": scenario_ddp, "no_sync": scenario_no_sync, "local_sgd": scenario_local_sgd,
        "local_sgd_shift": scenario_local_sgd_shift,
    }
    if _fsdp_available():
        scenarios.update({
            "fsdp": scenario_fsdp, "fsdp_guard": scenario_fsdp_guard,
            "fsdp_storages": scenario_fsdp_storages,
            "dcp": lambda r: scenario_dcp(r, out_dir),
            "fsdp_v5": lambda r: scenario_fsdp_v5(r, out_dir),
            "fsdp_v6": lambda r: scenario_fsdp_v5(r, out_dir, "v6"),
        })
    results = {}
    for name, fn in scenarios.items():
        t0 = time.perf_counter()
        try:
            results[name] = fn(rank)
        except Exception:  # noqa: BLE001 - recorded; the other rank may then time out
            results[name] = {"error": traceback.format_exc()}
        dist.barrier()
        print(f"rank {rank}: {name} {time.perf_counter() - t0:.1f} s", flush=True)
    torch.save(results, out_dir / f"rank{rank}.pt")
    dist.destroy_process_group()


# -- the tests, in the pytest process -----------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("distributed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(rank), str(out / "store"), str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        for rank in range(WORLD)
    ]
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("the distributed workers timed out")
    if any(p.returncode for p in procs):
        pytest.fail("a distributed worker failed:\n" + "\n".join(logs))
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    return ranks, out


def _get(run, name):
    ranks, _ = run
    if name not in ranks[0]:
        pytest.skip(f"{name} needs torch >= 2.6 (FSDP2), this is {torch.__version__}")
    for r in ranks:
        if "error" in r[name]:
            pytest.fail(f"scenario {name} raised:\n{r[name]['error']}")
    return [r[name] for r in ranks]


@pytest.mark.parametrize("mode", ["two-object", "wrapper"])
def test_ddp_state_bitwise_identical(run, mode):
    r0, r1 = (r[mode] for r in _get(run, "ddp"))
    assert r0["report"]["identical"] and r0["report"]["compared"] > 0, r0["report"]
    assert r0["report"] == r1["report"]
    for a, b in zip(r0["stab"], r1["stab"]):  # independent of check_consistency itself
        assert torch.equal(a, b)
    # it did train: the stability left its initial value (v1's 1 two-object, the default's 0)
    initial = 1.0 if mode == "two-object" else 0.0
    assert any(not torch.equal(s, torch.full_like(s, initial)) for s in r0["stab"])


def test_no_sync_accumulation_swgl_after_sync_is_identical(run):
    r0, _ = _get(run, "no_sync")
    assert r0["after"]["params"]["identical"], r0["after"]


def test_no_sync_swgl_inside_accumulation_diverges_and_is_detected(run):
    r0, r1 = _get(run, "no_sync")
    state = r0["inside"]["state"]
    assert not state["identical"] and state["max_abs_diff"] > 0
    assert any(name.endswith(".stability") for name in state["mismatched"])
    assert not any(name.endswith(".step") for name in state["mismatched"])
    assert "0.weight.stability" in " ".join(state["mismatched"])  # named by FQN
    assert r1["inside"]["state"] == state  # every rank gets the same report


def test_state_sync_every_k_steps(run):
    r0, r1 = _get(run, "local_sgd")
    synced = [(s + 1) % SYNC_EVERY == 0 for s in range(2 * SYNC_EVERY)]
    assert r0["identical"] == synced  # equal right after each sync, apart in between
    assert not r0["drifted_after_remove"]
    # four params, each with v6's stability, importance, anchor, path and detector
    assert r0["report"]["identical"] and r0["averaged"] == 4 * 5
    for a, b, after in zip(r0["before"], r1["before"], r0["after"]):
        torch.testing.assert_close(after, (a + b) / 2, rtol=1e-6, atol=0)


def test_the_check_and_the_sync_cover_every_tensor_the_default_keeps(run):
    """v6 keeps six tensors per param; the check compared the stability and the step only (it
    said identical while the ranks' importance differed by 5.0) and the sync averaged the
    stability only (a user's audit, nineteenth session)."""
    r0, r1 = _get(run, "local_sgd_shift")
    assert r0["keys"] == ["anchor", "consolidated", "detector", "path", "stability", "step"]
    assert r0["synced"]["compared"] == 4 * 6
    apart = " ".join(r0["apart"]["mismatched"])   # five steps after a sync
    assert not r0["apart"]["identical"] and ".path" in apart and ".detector" in apart
    assert r0["synced"]["identical"], r0["synced"]
    # each rank found its own shift; after the sync both hold the latest one
    assert r0["shifts"] == r1["shifts"] and r0["shifts"][0]["last_shift"] > 80


def test_state_sync_rejects_bad_arguments():
    from swgl.distributed import StateSync, check_consistency

    opt = SWGL(_model().parameters())
    with pytest.raises(ValueError, match="every"):
        StateSync(opt, every=0)
    with pytest.raises(TypeError, match="optimizer"):
        check_consistency(torch.optim.SGD(_model().parameters(), lr=0.1))


@pytest.mark.parametrize("foreach", [True, False])
def test_fsdp2_state_is_sharded_like_params(run, foreach):
    r0, r1 = (r[foreach] for r in _get(run, "fsdp"))
    for a, b in zip(r0["rows"], r1["rows"]):
        assert a["same_layout"] and b["same_layout"], a["name"]
        assert a["stab_local"] == a["param_local"] and b["stab_local"] == b["param_local"]
        assert a["stab_local"] + b["stab_local"] == a["numel"]  # 1/world each, no copy
        assert 0 < b["stab_local"] < a["numel"]
    # v6's stability, importance, anchor and path are sharded like each param; its detector
    # (a per-group vector, the same on every rank) and the step are compared
    assert r0["report"]["sharded"] == 4 * len(r0["rows"]) and r0["report"]["identical"]
    assert r0["report"]["compared"] == 2 * len(r0["rows"])


@pytest.mark.parametrize("foreach", [True, False])
def test_fsdp2_matches_one_process_on_the_global_batch(run, foreach):
    for row in _get(run, "fsdp")[0][foreach]["rows"]:
        assert row["step"] == STEPS
        assert row["stab_diff"] <= 1e-4 * row["stab_scale"], row
        assert row["param_diff"] <= 1e-5, row


def test_fsdp2_nonfinite_guard_agrees_across_ranks(run):
    r0, r1 = _get(run, "fsdp_guard")
    for r in (r0, r1):  # rank 1 saw the inf; rank 0 must skip as well
        assert r["unchanged"] and r["steps"] == [1.0] * 4


def test_fsdp2_storage_formats_train_or_are_rejected(run):
    r0, r1 = _get(run, "fsdp_storages")
    assert r0 == r1 and r0["fp32"] == {"elementwise": True, "result": "ok"}
    for name, found in r0.items():
        if found["elementwise"]:
            assert found["result"] == "ok", (name, found)
        elif not found["elementwise"]:  # state not sharded like the param: a clear error
            assert found["result"].startswith("ValueError") and "FSDP2" in found["result"], found


def test_dcp_round_trip_on_two_ranks(run):
    r0, r1 = _get(run, "dcp")
    assert r0["is_dtensor"] == "DTensor"
    assert all(r0["round_trip_equal"]) and all(r1["round_trip_equal"])


def test_dcp_reshard_save_on_two_load_on_one(run):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    _get(run, "dcp")
    _, out = run
    model = _model()
    opt = SWGL.wrap(torch.optim.AdamW(model.parameters(), lr=1e-2))
    osd = get_optimizer_state_dict(model, opt)
    dcp.load({"optim": osd}, checkpoint_id=str(out / "ckpt"), no_dist=True)
    set_optimizer_state_dict(model, opt, osd)
    full = torch.load(out / "full_stability.pt", weights_only=True)
    for name, p in model.named_parameters():
        assert torch.equal(opt.stability(p), full[name]), name
        assert float(opt.state[p]["step"]) == STEPS
    _loss(model, _batch(0, 0)).backward()  # and training goes on from there
    opt.step()


@pytest.mark.parametrize("rule", ["v5", "v6"])
def test_fsdp2_v5_state_is_sharded_and_matches_one_process_across_a_shift(run, rule):
    r0, r1 = _get(run, f"fsdp_{rule}")
    for a, b in zip(r0["rows"], r1["rows"]):
        assert a["sharded_like_param"] and b["sharded_like_param"], a["name"]
        # the detector sees the global grad norm: it fires at the same step as one process
        assert a["shift_at"] == b["shift_at"] == a["ref_shift_at"] >= V5_SHIFT, a
        assert all(d <= 1e-4 for d in a["diffs"].values()), a
        assert a["param_diff"] <= 1e-5, a
    assert all(r0["round_trip_equal"]) and all(r1["round_trip_equal"])



def test_dcp_round_trip_of_the_two_object_api_in_one_process(tmp_path):
    """``SWGL(model.parameters())`` through DCP's documented resume (docs/distributed.md): a
    fresh SWGL holds its initial stability from the start, so DCP does not make the zero-grad
    step that fills a fresh torch optimizer's state_dict, and SWGL's state_dict before any
    step used to list nothing: DCP loaded no SWGL state, silently. Here its whole state comes
    back across a detected shift, and training goes on as without the checkpoint."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    def train(model, swgl, base, steps):
        for step in steps:
            x, y = _batch(0, step)
            base.zero_grad()
            _loss(model, (x * (20.0 if step >= 60 else 1.0), y)).backward()
            swgl.step()
            base.step()

    model = _model()
    base, swgl = torch.optim.SGD(model.parameters(), lr=0.05), SWGL(model.parameters())
    train(model, swgl, base, range(70))
    assert swgl.shifts()[0]["last_shift"] > 0     # past a shift: anchor, importance, path
    ckpt = str(tmp_path / "ckpt")
    dcp.save({"optim": get_optimizer_state_dict(model, swgl)}, checkpoint_id=ckpt, no_dist=True)
    resumed = _model()
    resumed.load_state_dict(model.state_dict())
    base2, swgl2 = torch.optim.SGD(resumed.parameters(), lr=0.05), SWGL(resumed.parameters())
    osd = get_optimizer_state_dict(resumed, swgl2)
    dcp.load({"optim": osd}, checkpoint_id=ckpt, no_dist=True)
    set_optimizer_state_dict(resumed, swgl2, osd)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert set(swgl.state[p]) == set(swgl2.state[q])
        for key, value in swgl.state[p].items():
            assert torch.equal(value, swgl2.state[q][key]), key
    train(model, swgl, base, range(70, 80))
    train(resumed, swgl2, base2, range(70, 80))
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_a_fresh_two_object_state_dict_lists_first_step_state_and_loads_as_none():
    model = _model()
    swgl = SWGL(model.parameters())
    sd = swgl.state_dict()
    assert sorted(sd["state"]) == list(range(len(list(model.parameters()))))
    assert all(float(entry["step"]) == 0 for entry in sd["state"].values())
    other = SWGL(_model().parameters())
    other.load_state_dict(sd)
    assert all("step" not in state for state in other.state.values())
    assert all(set(state) == {"stability"} for state in other.state.values())


if __name__ == "__main__":
    _worker(int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]))
