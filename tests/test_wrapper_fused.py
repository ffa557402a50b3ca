"""The wrapper's fused path: ``SWGL.wrap(torch.optim.AdamW / SGD)`` stepped by swgl.optim's
fused SWGL + optimizer kernels on the base's own state (src/swgl/wrapper.py's docstring).

* parity (Triton: CUDA, or TRITON_INTERPRET=1 on the CPU): the fused path equals the phases
  around the base's own step (over 20 steps, and each step from the same state, fp32 and bf16
  params), and swgl.optim (its kernels and its foreach path), with a non-finite step (which
  the fused path skips whole), params of odd sizes, two groups with their own lr under a
  scheduler; the base's state stays torch's (a plain torch optimizer loads it, and the
  wrapper loads a plain one's); the two paths may follow each other;
* fallback (everywhere): each condition the fused path needs sends the step through the
  phases, with the reason, and the step stays right.
"""

from __future__ import annotations

import copy

import pytest
import torch

import swgl.optim
import swgl.wrapper
from swgl import SWGL, kernels
from swgl.graphs import GraphedPhases
from swgl.optim import TORCH_BASES
from swgl.rules import RULES

DEV = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernels = pytest.mark.skipif(
    not kernels.runs_on(torch.device(DEV)),
    reason="the fused path runs Triton's kernels: needs CUDA and Triton, or TRITON_INTERPRET=1 "
           "with Triton installed (the CPU through Triton's interpreter)",
)
needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and kernels.triton_available()),
    reason="host syncs and CUDA graphs are CUDA's: needs a CUDA device and Triton")

#: the bases the fused path takes: (torch class, its options)
BASES = {
    "adamw-fused": (torch.optim.AdamW, dict(betas=(0.8, 0.99), weight_decay=0.1, fused=True)),
    "adamw-capturable": (torch.optim.AdamW, dict(weight_decay=0.1, capturable=True)),
    "sgd-momentum": (torch.optim.SGD, dict(momentum=0.9, weight_decay=0.1)),
    "sgd-nesterov": (torch.optim.SGD, dict(momentum=0.9, nesterov=True)),
    "sgd": (torch.optim.SGD, dict()),
}
#: the bases, as test parameters: torch's capturable AdamW steps CUDA params only
KINDS = [pytest.param(kind, marks=pytest.mark.skipif(
    "capturable" in kind and DEV == "cpu", reason="torch's capturable AdamW needs CUDA"))
    for kind in BASES]
LRS = {torch.optim.AdamW: (1e-2, 3e-3), torch.optim.SGD: (5e-2, 1e-2)}
#: the rules the fused path takes: with Triton kernels (``Rule.kernel``), in mode "update" (a
#: rule given kernels later joins here, as it does swgl.optim's Triton tests)
FUSED_RULES = [name for name, rule in RULES.items()
               if rule.kernel is not None and "update" in rule.modes]
SIZES = (1, 33, 4095, 2 * 4096 + 3, 4096)
STEPS, NONFINITE_AT = 20, 7
#: whole runs of fp32 params (20 steps): the same math in another order
FP32_TOL = dict(rtol=1e-5, atol=1e-5)
#: v6's path integral over a whole run: each step adds g times a difference of two rounded
#: weights, so its error grows by |g| ulp(w) a step where the params stay within FP32_TOL
PATH_TOL = dict(rtol=1e-3, atol=1e-4)
#: one step from the same state (test_each_fused_step_equals_a_step_of_the_phases): a
#: difference, element by element, against ulps of the step's operands (the value before, the
#: value after; for torch's buffers also the grad), not of the result alone: where they nearly
#: cancel (torch's SGD sums ``mu b + g``, rounding twice) the result's own ulps say nothing.
#: fp32: the state within 2^-20 of its operands' magnitude (8 to 16 ulps: sums over a group in
#: another order; measured 1 ulp under Triton's interpreter), the params 2^-16 (measured 2^-20:
#: v4's ``rho c``, from such sums, scales the step). bf16: 2^-5,
#: 4 to 8 bf16 ulps: the phases round in each of torch's ops, the fused step once, and ``rho c``
#: scales a rounding of the base's step. Under Triton's interpreter, which rounds towards 0 where
#: CUDA and torch round to nearest, each stored base step loses up to an ulp towards 0 and v4's
#: rho (read from those steps) moved by up to 40% in the 34 elements of the first group, so
#: there bf16 params are held only to half their operands (the buffers and SWGL's state stay
#: within 2^-5; measured 2^-6.8)
STEP_RTOL = {
    torch.float32: {"param": 2**-16, "state": 2**-20},
    torch.bfloat16: {"param": 2**-5 if DEV == "cuda" else 2**-1, "state": 2**-5},
}


def _params(dtype):
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(n, generator=gen).to(device=DEV, dtype=dtype))
            for n in SIZES]


def _grads(step, dtype):
    gen = torch.Generator().manual_seed(100 + step)
    # a shift at step 12 (grads ten times larger): v5 consolidates and pulls
    scale = 10.0 if step >= 12 else 1.0
    out = [scale * torch.randn(n, generator=gen).to(device=DEV, dtype=dtype) for n in SIZES]
    if step == NONFINITE_AT:
        out[3][-1] = float("nan")
    return out


def _groups(params, lrs):
    return [{"params": params[:2], "lr": lrs[0]}, {"params": params[2:], "lr": lrs[1]}]


def _wrapper(kind, params, fused, **swgl_options):
    cls, kw = BASES[kind]
    base = cls(_groups(params, LRS[cls]), lr=LRS[cls][0], **kw)
    return SWGL.wrap(base, fused=fused, **swgl_options)


def _train(opt, params, dtype, skip_nonfinite=False, steps=STEPS):
    """``steps`` steps under a scheduler; ``skip_nonfinite``: the non-finite step is not taken
    (what the fused path does with it, and GradScaler with the phases)."""
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.9**t)
    for i in range(steps):
        for p, g in zip(params, _grads(i, dtype)):
            p.grad = g
        if not (skip_nonfinite and i == NONFINITE_AT):
            opt.step()
        sched.step()


def _assert_same_state_dtypes(a, b):
    """Two wrappers' state (the base's and SWGL's): the same keys, dtypes and devices."""
    pa = [p for g in a.param_groups for p in g["params"]]
    pb = [p for g in b.param_groups for p in g["params"]]
    for p, q in zip(pa, pb):
        for owner_a, owner_b in ((a.base, b.base), (a, b)):
            sa, sb = owner_a.state.get(p, {}), owner_b.state.get(q, {})
            assert {k: (v.dtype, v.device) for k, v in sa.items()} == {
                k: (v.dtype, v.device) for k, v in sb.items()}


def _assert_same_state(a, b, tol=FP32_TOL):
    """Two wrappers' params, the base's state and SWGL's, alike."""
    pa = [p for g in a.param_groups for p in g["params"]]
    pb = [p for g in b.param_groups for p in g["params"]]
    for p, q in zip(pa, pb):
        torch.testing.assert_close(p, q, **tol)
        for owner_a, owner_b in ((a.base, b.base), (a, b)):
            sa, sb = owner_a.state.get(p, {}), owner_b.state.get(q, {})
            assert set(sa) == set(sb)
            for key in sa:
                assert sa[key].dtype == sb[key].dtype and sa[key].device == sb[key].device, key
                key_tol = PATH_TOL if key.endswith("path") and tol is FP32_TOL else tol
                torch.testing.assert_close(sa[key].float(), sb[key].float(), **key_tol, msg=key)


# -- parity ------------------------------------------------------------------------------------


@needs_kernels
@pytest.mark.parametrize("kind", KINDS)
def test_fused_path_equals_the_phases_around_the_base(kind):
    runs = []
    for fused in (None, False):
        params = _params(torch.float32)
        opt = _wrapper(kind, params, fused)
        _train(opt, params, torch.float32, skip_nonfinite=fused is False)
        runs.append(opt)
    fused, phases = runs
    assert fused._stepping is not None and phases._stepping is None
    assert "fused=False" in phases._fused_why
    _assert_same_state(fused, phases)
    first = fused.param_groups[0]["params"][0]
    assert float(fused.state[first]["step"]) == STEPS - 1   # the non-finite step not counted
    if kind.startswith("adamw"):
        assert float(fused.base.state[first]["step"]) == STEPS - 1


@needs_kernels
@pytest.mark.parametrize("rule", FUSED_RULES)
def test_every_rule_with_kernels_takes_the_fused_path(rule):
    """The wrapper names no rule: any rule with kernels in mode "update" takes the fused path
    (through its ``around_fused_step`` where it has one) and steps as the phases do."""
    runs = []
    for fused in (None, False):
        params = _params(torch.float32)
        opt = _wrapper("adamw-fused", params, fused, rule=rule, mode="update")
        _train(opt, params, torch.float32, skip_nonfinite=fused is False, steps=10)
        runs.append(opt)
    assert runs[0]._stepping is not None and runs[1]._stepping is None
    _assert_same_state(*runs)


def _values(opt, params):
    """Per param, its value and its state's (the base's and SWGL's) by name, copied."""
    out = []
    for p in params:
        values = {"param": p.detach().clone()}
        for owner in (opt.base, opt):
            values.update({k: v.detach().clone() for k, v in owner.state.get(p, {}).items()})
        out.append(values)
    return out


def _assert_close_to_operands(fused, ref, before, grads, lrs, rtol):
    """Each of ``fused``'s values (:func:`_values`) within ``rtol`` of the operands of the
    step that made ``ref``'s (:data:`STEP_RTOL`); ``lrs``: each param's lr at that step."""
    for mine, theirs, old, g, lr in zip(fused, ref, before, grads, lrs):
        assert set(mine) == set(theirs)
        for key, value in theirs.items():
            a, b = mine[key].float(), value.float()
            scale = b.abs()
            if key in old:
                scale = scale + old[key].float().abs()
            if key == "param" and "momentum_buffer" in old:
                # SGD's step is lr times the new buffer, which is held to its own operands
                # (below): where mu b and g nearly cancel (on the H200, -13.7 + 13.7 gave
                # -0.0625 in torch's two bf16 roundings, -0.0376 in the kernel's one; exact
                # -0.0375), that rounding moves w by lr times an ulp of the operands, which
                # may be more than 2^-5 of a small w
                scale = scale + lr * (old["momentum_buffer"].float().abs()
                                      + g.float().abs().nan_to_num(0.0, 0.0))
            if key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
                scale = scale + g.float().abs().nan_to_num(0.0, 0.0)   # (the skipped step's)
            if key == "path":   # v6's: g times a difference of two rounded weights
                w = old["param"].float().abs() + theirs["param"].float().abs()
                scale = scale + (g.float().abs() * w).nan_to_num(0.0, 0.0, 0.0)
            limit = rtol["param" if key == "param" else "state"] * scale + 1e-30
            worst = ((a - b).abs() - limit).max()
            assert worst <= 0, (f"{key}: off by {(a - b).abs().max():.3g}, beyond the "
                                f"tolerance by {worst:.3g}")


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["adamw-fused", "sgd-momentum", "sgd-nesterov"])
def test_each_fused_step_equals_a_step_of_the_phases(kind, dtype):
    """From the same params, state and grads, each of the steps one at a time: the fused path
    against its reference, the phases around the base's own step (``fused=False``, the same
    rule and options), which loads the fused path's state at each step. Its own options stay:
    the checkpoint's groups carry ``swgl_fused=None``, and loading them as they are put the
    reference on the fused path from its second step on (the test then compared the fused
    path with itself).

    The two agree to ulps of each step's operands (:data:`STEP_RTOL`). bf16 params: the
    fused step reads the base's step back as the param stores it (``round(w') - w``), as the
    phases do, so the reference is the phases on bf16 params too; they round in each of
    torch's ops where the fused step rounds once. (A whole run drifts apart by an ulp or two a
    step: hence one step at a time.)"""
    params, ref_params = _params(dtype), _params(dtype)
    fused, phases = _wrapper(kind, params, None), _wrapper(kind, ref_params, False)
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda t: 0.9**t) for o in (fused, phases)]
    for i in range(STEPS):
        with torch.no_grad():
            for p, q in zip(params, ref_params):
                q.copy_(p)
        if i:
            saved = copy.deepcopy(fused.state_dict())
            for group in saved["param_groups"]:
                group["swgl_fused"] = False
            phases.load_state_dict(saved)
        before = _values(phases, ref_params)
        lrs = [group["lr"] for group in fused.param_groups for _ in group["params"]]
        grads = _grads(i, dtype)
        for p, q, g in zip(params, ref_params, grads):
            p.grad, q.grad = g, g.clone()
        fused.step()
        if i != NONFINITE_AT:   # (the phases hand a non-finite step to the base: not taken)
            phases.step()
        assert fused._stepping is not None and phases._stepping is None
        _assert_same_state_dtypes(fused, phases)
        _assert_close_to_operands(_values(fused, params), _values(phases, ref_params), before,
                                  grads, lrs, STEP_RTOL[dtype])
        for sched in scheds:
            sched.step()


@needs_kernels
@pytest.mark.parametrize("ref_fused", [None, False], ids=["kernels", "foreach"])
@pytest.mark.parametrize("kind", ["adamw-fused", "sgd-momentum", "sgd-nesterov"])
def test_fused_path_equals_swgl_optim(kind, ref_fused):
    """swgl.optim with the same options: on its kernels (the same kernels on its own state:
    the same numbers, fp32 params, whose buffers are fp32 in both), and on its foreach path
    (the rule's foreach variants around torch's foreach math: another reference, to float
    rounding)."""
    cls, kw = BASES[kind]
    params = _params(torch.float32)
    opt = _wrapper(kind, params, None)
    _train(opt, params, torch.float32)
    assert opt._stepping is not None
    ref_params = _params(torch.float32)
    ref_kw = {k: v for k, v in kw.items() if k not in ("fused", "capturable")}
    ref_cls = swgl.optim.AdamW if cls is torch.optim.AdamW else swgl.optim.SGD
    ref = ref_cls(_groups(ref_params, LRS[cls]), lr=LRS[cls][0], fused=ref_fused, **ref_kw)
    _train(ref, ref_params, torch.float32)
    tol = dict(rtol=1e-6, atol=1e-6) if ref_fused is None else FP32_TOL
    for p, q in zip(params, ref_params):
        torch.testing.assert_close(p, q, **tol)
        mine = {**opt.base.state.get(p, {}),
                **{"swgl_" + k: v for k, v in opt.state[p].items() if k != "step"}}
        theirs = dict(ref.state[q])
        if cls is torch.optim.SGD:   # torch's SGD keeps no step counter
            del theirs["step"]
        assert set(mine) == set(theirs)
        for key, value in theirs.items():
            key_tol = PATH_TOL if key.endswith("path") and tol is FP32_TOL else tol
            torch.testing.assert_close(mine[key], value, **key_tol, msg=key)


@needs_kernels
def test_paths_may_follow_each_other():
    """The fused path and the phases taking turns (a group option switched every other step)
    step as the phases alone: either reads what the other left in the base's state."""
    runs = []
    for alternate in (True, False):
        params = _params(torch.float32)
        opt = _wrapper("adamw-fused", params, None if alternate else False)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.9**t)
        for i in range(10):
            for p, g in zip(params, _grads(i, torch.float32)):
                p.grad = g
            if alternate:
                for group in opt.param_groups:
                    group["swgl_fused"] = None if i % 2 else False
            if i != NONFINITE_AT:
                opt.step()
                assert (opt._stepping is not None) == (alternate and i % 2 == 1)
            sched.step()
        runs.append(opt)
    _assert_same_state(*runs)


@needs_kernels
def test_options_set_by_hand_are_checked_on_the_fused_path():
    """The fused step runs no phase, and once took ``swgl_consolidation = nan`` set between
    steps as it was (caught on an H200): it checks a group's options as the phases do, and a
    rule set before the first step is taken, not refused for the state the per-param check
    made."""
    params = _params(torch.float32)
    opt = _wrapper("adamw-fused", params, None)
    opt.param_groups[0]["swgl_rule"] = "v7"   # before any step: an option like another
    opt.param_groups[0]["swgl_consolidation"] = None
    for i in range(2):
        for p, g in zip(params, _grads(i, torch.float32)):
            p.grad = g
        opt.step()
        assert opt._stepping is not None
    opt.param_groups[0]["swgl_consolidation"] = float("nan")
    with pytest.raises(ValueError, match="consolidation"):
        opt.step()
    opt.param_groups[0]["swgl_consolidation"] = None
    opt.param_groups[0]["swgl_rule"] = "v6"
    with pytest.raises(ValueError, match="rule changed from 'v7' to 'v6'"):
        opt.step()


@needs_kernels
@pytest.mark.parametrize("kind", [k for k in KINDS if k.values[0] != "sgd-nesterov"])
def test_base_state_is_torchs_both_ways(kind):
    """The base's state_dict after fused steps loads into a plain torch optimizer and matches
    the one torch's own steps make (keys, dtypes, devices, values); and a plain torch
    optimizer's state loads into the wrapper, whose fused steps continue as the phases do."""
    cls, kw = BASES[kind]
    params = _params(torch.float32)
    opt = _wrapper(kind, params, None)
    _train(opt, params, torch.float32, steps=4)
    phase_params = _params(torch.float32)
    phases = _wrapper(kind, phase_params, False)
    _train(phases, phase_params, torch.float32, steps=4)
    plain = cls(_groups(_params(torch.float32), LRS[cls]), lr=1.0, **kw)
    plain.load_state_dict(copy.deepcopy(opt.base.state_dict()))
    torch_made = phases.base.state_dict()["state"]
    for index, entry in plain.state_dict()["state"].items():
        assert set(entry) == set(torch_made[index])
        for key, value in entry.items():
            ref = torch_made[index][key]
            assert (value.dtype, value.device, value.shape) == (ref.dtype, ref.device, ref.shape)
            torch.testing.assert_close(value, ref, **FP32_TOL)

    # the other way: a plain torch optimizer's checkpoint (no SWGL state nor options) under
    # both paths
    plain_params = _params(torch.float32)
    plain = cls(_groups(plain_params, LRS[cls]), lr=LRS[cls][0], **kw)
    _train(plain, plain_params, torch.float32, steps=4)
    runs = []
    for fused in (None, False):
        ps = _params(torch.float32)
        wrapper = _wrapper(kind, ps, fused)
        wrapper.load_state_dict(copy.deepcopy(plain.state_dict()))
        assert wrapper.param_groups[0]["swgl_fused"] is fused   # the wrapper's options kept
        for i in range(4, NONFINITE_AT):
            for p, g in zip(ps, _grads(i, torch.float32)):
                p.grad = g
            wrapper.step()
        runs.append(wrapper)
    assert runs[0]._stepping is not None
    _assert_same_state(*runs)


@needs_kernels
def test_state_is_made_as_torch_makes_it():
    """A param's first fused step makes the base's state as torch's first step would: the
    counter on the param's device for fused/capturable AdamW, buffers in the param's dtype, and
    none at all for SGD without momentum."""
    for kind in ("adamw-fused", "sgd-momentum", "sgd"):
        made = []
        for fused in (None, False):
            params = _params(torch.bfloat16)
            opt = _wrapper(kind, params, fused)
            for p, g in zip(params, _grads(0, torch.bfloat16)):
                p.grad = g
            opt.step()
            made.append({i: {k: (v.dtype, v.device, v.shape) for k, v in entry.items()}
                         for i, entry in opt.base.state_dict()["state"].items()})
        assert made[0] == made[1], kind


@needs_kernels
def test_add_param_group_joins_the_fused_path():
    params = _params(torch.float32)
    opt = _wrapper("adamw-fused", params[:3], None)
    opt.add_param_group({"params": params[3:], "lr": 1e-3})
    for p, g in zip(params, _grads(0, torch.float32)):
        p.grad = g
    opt.step()
    assert opt._stepping is not None
    assert float(opt.base.state[params[4]]["step"]) == 1.0


@needs_kernels
def test_cuda_graphs_replay_the_fused_step_with_the_schedulers_lr(monkeypatch):
    """The fused path goes through the wrapper's graphs (a fake capture here, which runs the
    step once: the replays only count; CUDA's equality is tests/test_graphs_cuda.py's); the lr
    reaches it as a device scalar set at each step."""
    from test_graphs_policy import FakeCapture

    params = _params(torch.float32)
    opt = _wrapper("adamw-fused", params, None)
    cap = FakeCapture()
    monkeypatch.setattr(type(opt), "_graphs_possible", lambda self: True)
    monkeypatch.setattr(type(opt), "_graph_blocker", lambda self: None)
    opt._graphs = GraphedPhases(capture=cap)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for i in range(6):
        for p, g in zip(params, _grads(i, torch.float32)):
            p.grad = g.clone()
        opt.step()
        sched.step()
    assert opt._stepping is not None
    assert cap.captured == 1 and opt._graphs.before.replays >= 2
    assert opt._graphs.after.replays == 0      # no after phase: one fused step
    lr = opt._lr[id(opt.param_groups[0])]
    assert lr.item() == pytest.approx(LRS[torch.optim.AdamW][0] * 0.5**5)
    key = opt._graph_key()
    opt.param_groups[0]["lr"] = 1e-5           # read on the device: the same graph
    assert opt._graph_key() == key
    opt.param_groups[0]["betas"] = (0.5, 0.9)  # baked into the kernels' arguments
    assert opt._graph_key() != key


def _fake_graphs(opt, monkeypatch):
    """The wrapper's graphs with a fake capture (tests/test_graphs_policy.py's: it runs the
    step once, and a replay runs nothing)."""
    from test_graphs_policy import FakeCapture

    monkeypatch.setattr(type(opt), "_graphs_possible", lambda self: True)
    monkeypatch.setattr(type(opt), "_graph_blocker", lambda self: None)
    opt._graphs = GraphedPhases(capture=FakeCapture())


def _tensors(obj):
    """The tensors in ``obj``: nested lists, tuples (FusedGroup) and dicts."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


@needs_kernels
def test_the_graph_keeps_every_tensor_the_fused_step_reads(monkeypatch):
    """A replay reads and writes by address what its capture read: the base's state and step
    counters, SWGL's, the params, the lr scalars. The graph keeps them (and the launch
    tables) as long as it lives, so that no replay reaches memory reused for something else,
    whatever replaced them behind its back."""
    params = _params(torch.float32)
    opt = _wrapper("adamw-fused", params, None)
    _fake_graphs(opt, monkeypatch)
    for i in range(3):
        for p, g in zip(params, _grads(i, torch.float32)):
            p.grad = g.clone()
        opt.step()
    assert opt._graphs.before.from_graph
    held = {id(t) for t in _tensors(opt._graphs.before._held)}
    for p in params:
        for t in (p, *opt.base.state[p].values(), *opt.state[p].values()):
            assert id(t) in held
    assert all(id(lr) in held for lr in opt._lr.values())


@needs_kernels
def test_a_base_state_loaded_behind_the_wrappers_back_is_captured_anew(monkeypatch):
    """``wrapper.base.load_state_dict`` replaces the base's state tensors: the graph captured
    on the old ones is not replayed (it would write into them), the next step runs on the
    new ones."""
    params = _params(torch.float32)
    opt = _wrapper("adamw-fused", params, None)
    _fake_graphs(opt, monkeypatch)
    for i in range(4):
        for p, g in zip(params, _grads(i, torch.float32)):
            p.grad = g.clone()
        opt.step()
    assert opt._graphs.before.from_graph
    opt.base.load_state_dict(copy.deepcopy(opt.base.state_dict()))
    loaded = opt.base.state[params[2]]["exp_avg"].clone()
    for p, g in zip(params, _grads(4, torch.float32)):
        p.grad = g.clone()
    opt.step()
    assert opt._stepping is not None and not opt._graphs.before.from_graph
    assert not torch.equal(opt.base.state[params[2]]["exp_avg"], loaded)   # stepped on them


@needs_kernels
def test_the_lr_is_the_groups_where_graphs_cannot_run_this_step(monkeypatch):
    """The kernels read each group's lr from a device scalar only where this step set it
    (graphs may run); a step that may not run as a graph, with graphs still on (the option
    turned off), reads the group's lr, not a scalar left from an earlier step."""
    params = _params(torch.float32)
    opt = _wrapper("adamw-fused", params, None)
    possible = [True]
    monkeypatch.setattr(type(opt), "_graphs_possible", lambda self: possible[0])
    monkeypatch.setattr(type(opt), "_graph_blocker", lambda self: None)
    from test_graphs_policy import FakeCapture

    opt._graphs = GraphedPhases(capture=FakeCapture())
    seen = []
    step = swgl.wrapper.triton_step
    monkeypatch.setattr(swgl.wrapper, "triton_step",
                        lambda groups, *a: seen.append([g.lr for g in groups]) or step(groups, *a))
    for i in range(2):
        possible[0] = i == 0
        for p, g in zip(params, _grads(i, torch.float32)):
            p.grad = g.clone()
        opt.step()
    assert opt._graphs.enabled
    assert all(isinstance(lr, torch.Tensor) for lr in seen[0]) and seen[1] == [None, None]


@needs_kernels
@pytest.mark.parametrize("kind", ["adamw-fused", "sgd-momentum"])
def test_a_checkpoint_resumes_the_fused_path_bit_exactly(kind):
    """state_dict, then load_state_dict into a new wrapper on the same values: the state
    loaded is the state saved, bit for bit, and the steps after it are those of a run that
    never stopped."""
    def run(stop_at=None):
        params = _params(torch.float32)
        opt = _wrapper(kind, params, None)
        for i in range(10):
            if i == stop_at:
                saved = copy.deepcopy(opt.state_dict())
                params = [torch.nn.Parameter(p.detach().clone()) for p in params]
                opt = _wrapper(kind, params, None)
                opt.load_state_dict(saved)
                again = opt.state_dict()
                assert again["param_groups"] == saved["param_groups"]
                assert saved["state"].keys() == again["state"].keys()
                for index, entry in saved["state"].items():
                    assert entry.keys() == again["state"][index].keys()
                    for key, value in entry.items():
                        mine = again["state"][index][key]
                        assert (mine.dtype, mine.device) == (value.dtype, value.device), key
                        assert torch.equal(mine, value), key
            for p, g in zip(params, _grads(i, torch.float32)):
                p.grad = g
            opt.step()
            assert opt._stepping is not None
        return opt

    whole, resumed = run(), run(stop_at=5)
    _assert_same_state(whole, resumed, tol=dict(rtol=0, atol=0))


@needs_kernels
def test_a_state_tensor_replaced_by_hand_sends_the_step_through_the_phases():
    """A state tensor the kernels do not take, put in by hand under the key the per-param
    check ran under: the step goes through the phases, silently, and the next is checked
    anew."""
    params = _params(torch.float32)
    opt = _wrapper("sgd-momentum", params, None)
    for i in range(2):
        for p, g in zip(params, _grads(i, torch.float32)):
            p.grad = g
        opt.step()
    assert opt._stepping is not None
    buf = opt.base.state[params[1]]["momentum_buffer"]
    strided = torch.zeros(2 * buf.numel(), device=buf.device)[::2]
    opt.base.state[params[1]]["momentum_buffer"] = strided.copy_(buf)
    for i in range(2, 4):
        for p, g in zip(params, _grads(i, torch.float32)):
            p.grad = g
        opt.step()
        assert opt._stepping is None
    assert "do not take" in opt._fused_why


@needs_kernels
def test_a_momentum_buffer_of_none_is_made_as_torch_makes_it():
    """A checkpoint of an older torch's SGD (momentum 0 then) keeps ``momentum_buffer: None``;
    with momentum now, the fused step makes the buffer as torch's first step would and steps
    as the phases do."""
    runs = []
    for fused in (None, False):
        params = _params(torch.float32)
        opt = _wrapper("sgd-momentum", params, fused)
        for p in params:
            opt.base.state[p]["momentum_buffer"] = None
        _train(opt, params, torch.float32, skip_nonfinite=fused is False, steps=3)
        runs.append(opt)
    assert runs[0]._stepping is not None
    _assert_same_state(*runs)


def test_adamw_of_an_older_torch_without_decoupled_weight_decay_takes_the_fused_path():
    """torch before 2.7 keeps no ``decoupled_weight_decay`` in AdamW's groups (AdamW's decay
    is decoupled there): not a condition that fails, nor a KeyError."""
    group = dict(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))],
                                   fused=True).param_groups[0])
    group.pop("decoupled_weight_decay", None)
    assert TORCH_BASES[torch.optim.AdamW].blocker(group) is None


@needs_cuda
def test_fused_path_never_syncs_and_skips_a_nonfinite_step():
    params = _params(torch.float32)
    opt = _wrapper("adamw-fused", params, None)
    for i in range(NONFINITE_AT + 1):
        for p, g in zip(params, _grads(i, torch.float32)):
            p.grad = g
        before = [p.detach().clone() for p in params]
        if i >= 3:   # the first steps check the params, make the state, build the kernels
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert opt._stepping is not None
    assert all(torch.equal(p, q) for p, q in zip(params, before))
    assert float(opt.base.state[params[0]]["step"]) == NONFINITE_AT


# -- fallback ----------------------------------------------------------------------------------


def _fallback_case(base_cls, base_kw, swgl_kw, params=None):
    torch.manual_seed(0)
    params = params or [torch.nn.Parameter(torch.randn(5, 3)), torch.nn.Parameter(torch.randn(3))]
    return params, SWGL.wrap(base_cls(params, lr=1e-2, **base_kw), **swgl_kw)


class _MyAdamW(torch.optim.AdamW):
    pass


FALLBACKS = {
    "amsgrad": (torch.optim.AdamW, dict(amsgrad=True, fused=True), {}, "amsgrad=True"),
    "maximize": (torch.optim.AdamW, dict(maximize=True, fused=True), {}, "maximize=True"),
    "host counters": (torch.optim.AdamW, dict(foreach=True), {}, "on the host"),
    "subclass": (_MyAdamW, dict(fused=True), {}, None),
    "adam": (torch.optim.Adam, dict(fused=True), {}, None),
    "tensor lr": (torch.optim.AdamW, dict(fused=True), {"lr_tensor": True}, "lr is a Tensor"),
    "sgd dampening": (torch.optim.SGD, dict(momentum=0.9, dampening=0.1), {}, "dampening"),
    "swgl fused=False": (torch.optim.AdamW, dict(fused=True), dict(fused=False), "fused=False"),
    "grad mode": (torch.optim.AdamW, dict(fused=True), dict(rule="v4", mode="grad"),
                  "mode 'grad'"),
    "storage": (torch.optim.AdamW, dict(fused=True), dict(storage="bf16"), "storage"),
    "shock": (torch.optim.AdamW, dict(fused=True), dict(rule="v2", shock=2.0), "do not implement"),
}


@pytest.mark.parametrize("case", list(FALLBACKS))
def test_each_condition_falls_back_to_the_phases(case, monkeypatch):
    """With Triton taken as available (the conditions are checked before any kernel), each
    failing condition sends the step through the phases, naming why."""
    monkeypatch.setattr(kernels, "triton_available", lambda: True)
    cls, base_kw, swgl_kw, why = FALLBACKS[case]
    swgl_kw = dict(swgl_kw)
    tensor_lr = swgl_kw.pop("lr_tensor", False)
    params, opt = _fallback_case(cls, base_kw, swgl_kw)
    if tensor_lr:
        opt.param_groups[0]["lr"] = torch.tensor(1e-2)
    for p in params:
        p.grad = torch.randn_like(p)
    before = [p.detach().clone() for p in params]
    opt.step()
    assert opt._stepping is None
    if why is not None:
        assert why in opt._fused_why
    assert not all(torch.equal(p, q) for p, q in zip(params, before))   # it stepped


def test_cpu_params_fall_back_where_the_kernels_take_cuda_only(monkeypatch):
    """Triton present (but no interpreter): CPU params take the phases."""
    monkeypatch.setattr(kernels, "triton_available", lambda: True)
    monkeypatch.setattr(kernels, "_INTERPRET", False)
    params, opt = _fallback_case(torch.optim.AdamW, dict(fused=True), {})
    ref_params, ref = _fallback_case(torch.optim.AdamW, dict(fused=True), dict(fused=False))
    for i in range(3):
        for p, q in zip(params, ref_params):
            p.grad = torch.full_like(p, 0.1 * (i + 1))
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
    assert opt._stepping is None and "the kernels do not take" in opt._fused_why
    for p, q in zip(params, ref_params):
        assert torch.equal(p, q)


def test_hooks_on_the_base_keep_its_step(monkeypatch):
    """Whatever hooked or replaced the base's own step expects it to run."""
    monkeypatch.setattr(kernels, "triton_available", lambda: True)
    params, opt = _fallback_case(torch.optim.AdamW, dict(fused=True), {})
    fired = []
    opt.base.register_step_post_hook(lambda *a: fired.append(1))
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert fired == [1] and "step hooks" in opt._fused_why
    params, opt = _fallback_case(torch.optim.AdamW, dict(fused=True), {})
    torch.optim.lr_scheduler.StepLR(opt.base, step_size=1)   # wraps the base's step
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    assert opt._stepping is None and "replaced" in opt._fused_why
