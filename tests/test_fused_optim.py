"""swgl.optim.AdamW / SGD: SWGL fused into the optimizer step.

* foreach fallback (everywhere): equals ``SWGL.wrap(torch optimizer)`` in every rule and mode
  (mode "grad" also equals the two-object pattern).
* Triton path (CUDA + Triton, or TRITON_INTERPRET=1): equals the foreach fallback, skips
  non-finite steps without a host sync.
"""

from __future__ import annotations

import copy
import re

import pytest
import torch

import swgl.optim
import swgl.optim._base as optim_base
from swgl import SWGL, kernels
from swgl.rules import DEFAULT_RULE, RULES

RULE_NAMES = tuple(RULES)
GRAD_RULES = tuple(name for name in RULE_NAMES if "grad" in RULES[name].modes)
MODES = [(rule, mode) for rule in RULE_NAMES for mode in RULES[rule].modes]
#: the rules swgl.optim's Triton step takes
KERNEL_MODES = [(rule, mode) for rule, mode in MODES if RULES[rule].kernel is not None]
DEV = "cuda" if torch.cuda.is_available() else "cpu"
needs_kernels = pytest.mark.skipif(
    not kernels.runs_on(torch.device(DEV)),
    reason="needs CUDA and Triton (or TRITON_INTERPRET=1 with Triton installed)",
)
SW = dict(alpha=0.9, lambda_reg=0.05, eps=1e-8, max_boost=10.0)
ADAMW = dict(lr=1e-2, betas=(0.8, 0.99), eps=1e-8, weight_decay=0.1)
SGD_KW = [
    dict(lr=1e-2, momentum=0.9, dampening=0.1, weight_decay=0.1),
    dict(lr=1e-2, momentum=0.9, nesterov=True),
    dict(lr=1e-2),
]


def _model(dtype=torch.float32, device="cpu"):
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(7, 33), torch.nn.Tanh(), torch.nn.Linear(33, 3))
    return net.to(device=device, dtype=dtype)


def _backward(net, seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    p = next(net.parameters())
    x = torch.randn(16, 7, generator=gen).to(p)
    y = scale * torch.randn(16, 3, generator=gen).to(p.device)
    net.zero_grad()
    torch.nn.functional.mse_loss(net(x).float(), y).backward()


def _max_diff(a, b):
    return max((p.float() - q.float()).abs().max().item() for p, q in zip(a.parameters(),
                                                                            b.parameters()))


def _sw(rule):
    return {**SW, **({"signal": "relative"} if "signal" in RULES[rule].options else {})}


def _make(kind, params, rule, mode="grad", fused=False, **kw):
    cls = swgl.optim.AdamW if kind == "adamw" else swgl.optim.SGD
    return cls(params, **kw, swgl=dict(rule=rule, mode=mode, **_sw(rule)), fused=fused)


# -- foreach fallback -------------------------------------------------------------------------


@pytest.mark.parametrize("rule", GRAD_RULES)
@pytest.mark.parametrize("kind", ["adamw", "sgd0", "sgd1", "sgd2"])
def test_grad_mode_equals_swgl_then_torch_optimizer(rule, kind):
    fused_net, ref_net = _model(), _model()
    if kind == "adamw":
        opt = _make("adamw", fused_net.parameters(), rule, **ADAMW)
        base = torch.optim.AdamW(ref_net.parameters(), **ADAMW, foreach=True)
    else:
        kw = SGD_KW[int(kind[-1])]
        opt = _make("sgd", fused_net.parameters(), rule, **kw)
        base = torch.optim.SGD(ref_net.parameters(), **kw)
    mod = SWGL(ref_net.parameters(), rule=rule, mode="grad", **_sw(rule))
    for i in range(5):
        _backward(fused_net, i)
        _backward(ref_net, i)
        grads = [p.grad.clone() for p in fused_net.parameters()]
        opt.step()
        assert all(torch.equal(p.grad, g) for p, g in zip(fused_net.parameters(), grads))
        mod.step()
        base.step()
    assert _max_diff(fused_net, ref_net) < 1e-6


@pytest.mark.parametrize("rule, mode", MODES)
@pytest.mark.parametrize("kind", ["adamw", "sgd0", "sgd1", "sgd2"])
def test_equals_the_wrapper_around_the_torch_optimizer(rule, mode, kind):
    fused_net, ref_net = _model(), _model()
    if kind == "adamw":
        opt = _make("adamw", fused_net.parameters(), rule, mode, **ADAMW)
        base = torch.optim.AdamW(ref_net.parameters(), **ADAMW, foreach=True)
    else:
        kw = SGD_KW[int(kind[-1])]
        opt = _make("sgd", fused_net.parameters(), rule, mode, **kw)
        base = torch.optim.SGD(ref_net.parameters(), **kw)
    ref = SWGL.wrap(base, rule=rule, mode=mode, **_sw(rule))
    for i in range(5):
        for net, o in ((fused_net, opt), (ref_net, ref)):
            _backward(net, i)
            o.step()
    assert _max_diff(fused_net, ref_net) < 1e-6


def test_shares_the_defaults_of_swgl():
    opt = swgl.optim.AdamW(_model().parameters())
    wrapped = SWGL.wrap(torch.optim.AdamW(_model().parameters()))
    mine = opt.param_groups[0]["swgl"]
    theirs = {k[len("swgl_"):]: v for k, v in wrapped.param_groups[0].items()
              if k.startswith("swgl_")}
    assert mine == {k: theirs[k] for k in mine}
    assert mine["rule"] == "v6" and mine["mode"] == "update"
    assert mine["alpha"] == 0.999 and mine["lambda_reg"] == 0.0   # v6's measured defaults
    assert mine["consolidation"] == 3e-4 and mine["consolidation_horizon"] == 0.0


@pytest.fixture(params=["host", "device", "triton"])
def path(request, monkeypatch):
    """The step's path, as ``fused``: foreach with one host read for the non-finite guard (the
    CPU's), foreach with the device flag and masked commits (CUDA's, forced here), or the
    Triton kernels."""
    if request.param == "device":
        monkeypatch.setattr(optim_base, "_guard_on_device", lambda work: True)
    if request.param == "triton":
        if not kernels.runs_on(torch.device(DEV)):
            pytest.skip("needs CUDA and Triton (or TRITON_INTERPRET=1 with Triton installed)")
        return True
    return False


@pytest.mark.parametrize("rule, mode", [("v2", "grad"), ("v4", "update"), ("v4", "grad")])
@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_nonfinite_grad_skips_whole_step(kind, rule, mode, path):
    net = _model(device=DEV if path else "cpu")
    kw = ADAMW if kind == "adamw" else SGD_KW[0]
    opt = _make(kind, net.parameters(), rule, mode, fused=path, **kw)
    _backward(net, 0)
    opt.step()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in net.parameters()}
    _backward(net, 1)
    net[2].bias.grad[0] = float("nan")
    opt.step()
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    for p in net.parameters():
        for k, v in opt.state[p].items():
            assert torch.equal(v, state[id(p)][k]), k


@pytest.mark.parametrize("mode", ["update", "grad"])
@pytest.mark.parametrize("kind", ["adamw", "sgd0", "sgd1"])
def test_device_guard_equals_the_host_guard(kind, mode, monkeypatch):
    nets = [_model(), _model()]
    kw = ADAMW if kind == "adamw" else SGD_KW[int(kind[-1])]
    base = "adamw" if kind == "adamw" else "sgd"
    opts = [_make(base, net.parameters(), "v4", mode, **kw) for net in nets]
    for i in range(4):
        for j, (net, opt) in enumerate(zip(nets, opts)):
            monkeypatch.setattr(optim_base, "_guard_on_device", lambda work, j=j: j == 1)
            _backward(net, i)
            if i == 2:
                net[0].weight.grad[1, 1] = float("inf")
            opt.step()
    assert _max_diff(*nets) == 0.0
    for p, q in zip(*(n.parameters() for n in nets)):
        for key, value in opts[0].state[p].items():
            assert torch.equal(value, opts[1].state[q][key]), key


def test_state_dict_round_trip_continues_identically():
    a, b = _model(), _model()
    opt_a = _make("adamw", a.parameters(), "v2", "update", **ADAMW)
    for i in range(3):
        _backward(a, i)
        opt_a.step()
    b.load_state_dict(a.state_dict())
    opt_b = _make("adamw", b.parameters(), "v1", **ADAMW)  # its options come from the file
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))
    assert opt_b.param_groups[0]["swgl"]["rule"] == "v2"
    assert set(opt_b.state[next(b.parameters())]) == {
        "step", "exp_avg", "exp_avg_sq", "swgl_stability"}
    for i in range(3, 5):
        for net, opt in ((a, opt_a), (b, opt_b)):
            _backward(net, i)
            opt.step()
    assert _max_diff(a, b) == 0.0


def test_param_group_swgl_options_merge_over_defaults():
    net = _model()
    opt = swgl.optim.SGD([{"params": net[0].parameters(), "swgl": {"alpha": 0.5}},
                          {"params": net[2].parameters()}], lr=0.1, swgl={"rule": "v1"})
    assert opt.param_groups[0]["swgl"]["alpha"] == 0.5
    assert opt.param_groups[0]["swgl"]["rule"] == "v1"
    assert opt.param_groups[1]["swgl"]["alpha"] == 0.99


def _two_groups(kind, net, **kw):
    cls = swgl.optim.AdamW if kind == "adamw" else swgl.optim.SGD
    return cls([{"params": net[0].parameters()}, {"params": net[2].parameters()}], lr=1e-2,
               **kw)


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
def test_each_param_group_owns_its_swgl_options(kind):
    """As torch's groups hold their own values: a change to one group's ``swgl`` dict acts on
    that group alone, not on the others, the defaults or a group added later."""
    nets = [_model(), _model()]
    changed, ref = (_two_groups(kind, net) for net in nets)
    assert changed.param_groups[0]["swgl"] is not changed.param_groups[1]["swgl"]
    assert changed.param_groups[0]["swgl"] is not changed.defaults["swgl"]
    changed.param_groups[0]["swgl"]["alpha"] = 0.5
    changed.param_groups[0]["swgl"]["consolidation"] = 0.5
    assert changed.param_groups[1]["swgl"] == ref.param_groups[1]["swgl"]
    assert changed.defaults["swgl"] == ref.defaults["swgl"]
    late = torch.nn.Parameter(torch.zeros(3))
    changed.add_param_group({"params": [late]})
    assert changed.param_groups[2]["swgl"] == ref.defaults["swgl"]
    for i in range(3):
        for net, opt in zip(nets, (changed, ref)):
            _backward(net, i)
            opt.step()
    # group 1 stepped exactly as without the change; group 0 under its own alpha
    for p, q in zip(nets[0][2].parameters(), nets[1][2].parameters()):
        assert torch.equal(p, q)
        assert torch.equal(changed.state[p]["swgl_stability"], ref.state[q]["swgl_stability"])
    for p, q in zip(nets[0][0].parameters(), nets[1][0].parameters()):
        assert not torch.equal(changed.state[p]["swgl_stability"],
                               ref.state[q]["swgl_stability"])


@pytest.mark.parametrize(
    "how, change, error, match",
    [
        ("set", dict(alpha=5.0), ValueError, r"param_groups\[1\]\['swgl'\]\['alpha'\]"),
        ("set", dict(mode="grad"), ValueError, r"param_groups\[1\]\['swgl'\]\['mode'\]"),
        ("set", dict(consolidation=-1.0), ValueError,
         r"param_groups\[1\]\['swgl'\]\['consolidation'\]"),
        ("set", dict(rule="v9"), ValueError, r"param_groups\[1\]\['swgl'\]\['rule'\]"),
        ("set", dict(colour=1), ValueError, "unknown options"),
        ("replace", None, TypeError, r"param_groups\[1\]\['swgl'\] must be a dict"),
        ("replace", {"alpha": 0.5}, ValueError,
         r"param_groups\[1\]\['swgl'\] lacks the options"),
    ],
)
def test_a_changed_swgl_option_is_checked_at_the_next_step(how, change, error, match):
    net = _model()
    opt = _two_groups("adamw", net)
    _backward(net, 0)
    opt.step()
    good = copy.deepcopy(opt.param_groups[1]["swgl"])
    if how == "set":
        opt.param_groups[1]["swgl"].update(change)
    else:
        opt.param_groups[1]["swgl"] = change
    weights = copy.deepcopy(net.state_dict())
    state = {(i, k): v.clone() for i, p in enumerate(net.parameters())
             for k, v in opt.state[p].items()}
    _backward(net, 1)
    with pytest.raises(error, match=match):
        opt.step()
    # refused before anything moved
    for key, value in net.state_dict().items():
        assert torch.equal(value, weights[key]), key
    for i, p in enumerate(net.parameters()):
        for k, v in opt.state[p].items():
            assert torch.equal(v, state[i, k]), k
    # and refused again until it is put right
    with pytest.raises(error, match=match):
        opt.step()
    opt.param_groups[1]["swgl"] = good
    opt.step()
    assert float(opt.state[net[2].weight]["step"]) == 2


def test_a_valid_change_between_steps_takes_effect():
    """An option set in place between steps acts from the next step on, as a group dict
    replaced by a checked one does; an int is taken as the float it stands for."""
    nets = [_model(), _model(), _model()]
    set_, replaced, kept = (_two_groups("adamw", net) for net in nets)
    for i in range(3):
        if i == 1:
            set_.param_groups[0]["swgl"]["max_boost"] = 4
            replaced.param_groups[0]["swgl"] = optim_base.check_swgl(
                {"max_boost": 4.0}, replaced.param_groups[0]["swgl"])
            for opt in (set_, replaced):
                opt.param_groups[0]["swgl"]["alpha"] = 0.5
        for net, opt in zip(nets, (set_, replaced, kept)):
            _backward(net, i)
            opt.step()
    assert set_.param_groups[0]["swgl"] == replaced.param_groups[0]["swgl"]
    assert isinstance(set_.param_groups[0]["swgl"]["max_boost"], float)
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(p, q)
        assert torch.equal(set_.state[p]["swgl_stability"], replaced.state[q]["swgl_stability"])
    assert not torch.equal(set_.state[nets[0][0].weight]["swgl_stability"],
                           kept.state[nets[2][0].weight]["swgl_stability"])


@pytest.mark.parametrize("kind", ["adamw", "sgd"])
@pytest.mark.parametrize(
    "dtype, match", [(torch.complex64, "is complex"), (torch.int64, "has dtype torch.int64")])
def test_complex_and_integer_params_are_refused(kind, dtype, match):
    """As SWGL and SWGL.wrap refuse them (swgl.base.check_params), when built and when a
    group is added; a refused group leaves the optimizer as it was."""
    bad = torch.zeros(4, dtype=dtype)
    if dtype.is_complex:
        bad = torch.nn.Parameter(bad)
    cls = swgl.optim.AdamW if kind == "adamw" else swgl.optim.SGD
    with pytest.raises(TypeError, match=r"params\[1\] " + match):
        cls([torch.nn.Parameter(torch.zeros(2)), bad], lr=0.1)
    net = _model()
    opt = cls(net.parameters(), lr=0.1)
    with pytest.raises(TypeError, match=r"params\[0\] " + match):
        opt.add_param_group({"params": [bad]})
    assert len(opt.param_groups) == 1
    _backward(net, 0)
    opt.step()
    assert float(opt.state[net[0].weight]["step"]) == 1


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(swgl={"alpha": 1.5}), ValueError, r"swgl\['alpha'\]"),
        (dict(swgl={"mode": "both"}), ValueError, r"swgl\['mode'\]"),
        (dict(swgl={"rule": "v9"}), ValueError, r"swgl\['rule'\]"),
        (dict(swgl={"bogus": 1}), ValueError, "unknown options"),
        (dict(swgl=[("alpha", 0.5)]), TypeError, "swgl must be a dict"),
        (dict(fused="yes"), TypeError, "fused"),
        (dict(lr=-1.0), ValueError, "lr"),
        (dict(betas=(0.9,)), ValueError, "betas"),
        (dict(betas=(0.9, 1.0)), ValueError, r"betas\[1\]"),
    ],
)
def test_adamw_argument_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        swgl.optim.AdamW(_model().parameters(), **kwargs)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(nesterov=True), ValueError, "nesterov"),
        (dict(momentum=0.9, dampening=0.1, nesterov=True), ValueError, "nesterov"),
        (dict(nesterov=1), TypeError, "nesterov"),
        (dict(momentum=-0.1), ValueError, "momentum"),
    ],
)
def test_sgd_argument_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        swgl.optim.SGD(_model().parameters(), lr=0.1, **kwargs)


@pytest.mark.skipif(kernels.triton_available(), reason="checks the error without Triton")
def test_fused_true_without_triton_raises():
    with pytest.raises(RuntimeError, match="fused=True"):
        swgl.optim.AdamW(_model().parameters(), fused=True)


@pytest.mark.skipif(kernels.runs_on(torch.device("cpu")), reason="Triton's CPU interpreter")
@pytest.mark.parametrize("rule", ["v1", "v2", DEFAULT_RULE])
def test_fused_true_on_the_cpu_is_what_its_error_says(rule, monkeypatch):
    """Where fused=True is accepted (Triton installed), CPU params step under the rules with a
    compiled CPU path, as the foreach path does; the error for the others names those rules."""
    monkeypatch.setattr(kernels, "triton_available", lambda: True)
    nets = [_model(), _model()]
    mode = RULES[rule].modes[0]
    opts = [_make("adamw", net.parameters(), rule, mode, fused=fused, **ADAMW)
            for net, fused in zip(nets, (True, False))]
    compiled = sorted(name for name, r in RULES.items() if r.cpu_fused)
    if rule not in compiled:
        _backward(nets[0], 0)
        with pytest.raises(RuntimeError, match=re.escape(f"for rules {compiled}, every param")):
            opts[0].step()
        return
    for i in range(3):
        for net, opt in zip(nets, opts):
            _backward(net, i)
            opt.step()
    assert _max_diff(*nets) < 1e-6


def test_docs_name_the_default_rule_and_every_swgl_option():
    from swgl.optim import _base, adamw

    for doc in (swgl.optim.__doc__, _base.__doc__, adamw.__doc__):
        named = re.findall(r"\bthe default(?: rule)?,?\s+`*(v\d)\b", doc)
        assert named and set(named) == {DEFAULT_RULE}, named
    listed = swgl.optim.AdamW.__doc__.split("swgl: ")[1].split("fused:")[0]
    assert [name for name in swgl.optim.SWGL_DEFAULTS if f"``{name}``" not in listed] == []


# -- Triton path ------------------------------------------------------------------------------


def _pair(kind, rule, mode, dtype, kw):
    nets = [_model(dtype, DEV), _model(dtype, DEV)]
    opts = [_make(kind, nets[0].parameters(), rule, mode, fused=True, **kw),
            _make(kind, nets[1].parameters(), rule, mode, fused=False, **kw)]
    return nets, opts


@needs_kernels
@pytest.mark.parametrize("rule, mode", KERNEL_MODES)
@pytest.mark.parametrize("kind", ["adamw", "sgd0", "sgd1", "sgd2"])
def test_triton_step_matches_foreach(kind, rule, mode):
    kw = ADAMW if kind == "adamw" else SGD_KW[int(kind[-1])]
    base = "adamw" if kind == "adamw" else "sgd"
    nets, opts = _pair(base, rule, mode, torch.float32, kw)
    for i in range(4):
        for net, opt in zip(nets, opts):
            _backward(net, i)
            if i == 2:
                net[0].weight.grad[1, 1] = float("inf")
            opt.step()
        # v2 + Adam amplifies fp32 rounding of the per-tensor mean a little
        assert _max_diff(*nets) < (1e-5 if rule in ("v2", "v3") else 1e-6)
    for p, q in zip(*(n.parameters() for n in nets)):
        st, ref = opts[0].state[p], opts[1].state[q]
        assert float(st["step"]) == float(ref["step"]) == 3.0
        for key in ref:
            torch.testing.assert_close(st[key].cpu(), ref[key].cpu(), rtol=1e-4, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("rule, mode", KERNEL_MODES)
@pytest.mark.parametrize("base", ["adamw", "sgd"])
def test_triton_step_bf16_params_one_step(base, rule, mode):
    kw = ADAMW if base == "adamw" else SGD_KW[0]
    nets, opts = _pair(base, rule, mode, torch.bfloat16, kw)
    for net, opt in zip(nets, opts):
        _backward(net, 0)
        opt.step()
    for p, q in zip(*(n.parameters() for n in nets)):
        assert p.dtype == torch.bfloat16
        # one bf16 ulp where the fp32 results straddle a rounding boundary
        torch.testing.assert_close(p, q, rtol=1e-2, atol=1e-2)


# Triton's interpreter rounds to bf16 towards 0 (a GPU to nearest): an ulp a rounding on the
# bf16 params, and through their share of sum(g u) a little on rho, so on fp32 params too
FP32_TOL = dict(rtol=1e-5, atol=1e-5) if DEV == "cpu" else dict(rtol=1e-6, atol=1e-6)
BF16_TOL = dict(rtol=2**-4, atol=1e-2) if DEV == "cpu" else dict(rtol=2**-7, atol=1e-2)


def _tensors(seed, dtypes):
    """Params of odd sizes (one element, a partial tile, tiles and a tail) and their grads."""
    gen = torch.Generator().manual_seed(seed)
    sizes = (1, 33, 4095, 2 * 4096 + 3, 4096)
    return [torch.randn(n, generator=gen).to(device=DEV, dtype=dt)
            for n, dt in zip(sizes, dtypes)]


@needs_kernels
@pytest.mark.parametrize("mode", ["update", "grad"])
@pytest.mark.parametrize("kind", ["adamw", "sgd0", "sgd1", "sgd2"])
def test_triton_v4_odd_sizes_and_mixed_dtypes_match_foreach(kind, mode):
    """One param group over two launch groups (fp32 and bf16 params): one k and one rho."""
    dtypes = (torch.float32, torch.bfloat16, torch.float32, torch.float32, torch.bfloat16)
    kw = ADAMW if kind == "adamw" else SGD_KW[int(kind[-1])]
    base = "adamw" if kind == "adamw" else "sgd"
    params = [_tensors(0, dtypes), _tensors(0, dtypes)]
    opts = [_make(base, ps, "v4", mode, fused=fused, **kw)
            for ps, fused in zip(params, (True, False))]
    for i in range(4):
        grads = _tensors(i + 1, dtypes)
        if i == 2:
            grads[3][-1] = float("nan")
        for ps, opt in zip(params, opts):
            for p, g in zip(ps, grads):
                p.grad = g.clone()
            opt.step()
    for p, q in zip(*params):
        torch.testing.assert_close(p, q, **(FP32_TOL if p.dtype == torch.float32 else BF16_TOL))
        st, ref = opts[0].state[p], opts[1].state[q]
        assert float(st["step"]) == float(ref["step"]) == 3.0
        for key in ref:  # SGD's weight decay carries a bf16 param's difference into its buffer
            tol = dict(rtol=1e-4, atol=1e-4) if p.dtype == torch.float32 else BF16_TOL
            torch.testing.assert_close(st[key], ref[key], **tol)


@pytest.mark.skipif(not (torch.cuda.is_available() and kernels.triton_available()),
                    reason="needs CUDA and Triton")
@pytest.mark.parametrize("rule", ["v1", "v3"])
def test_triton_step_never_syncs_and_skips_on_device(rule):
    net = _model(device="cuda")
    opt = _make("adamw", net.parameters(), rule, fused=True, **ADAMW)
    _backward(net, 0)
    opt.step()  # compiles the kernels
    torch.cuda.synchronize()
    before = [p.clone() for p in net.parameters()]
    _backward(net, 1)
    net[0].bias.grad[0] = float("nan")
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))
    assert float(opt.state[net[0].weight]["step"]) == 1.0


@pytest.mark.skipif(not (torch.cuda.is_available() and kernels.triton_available()),
                    reason="needs CUDA and Triton")
def test_triton_grad_mode_equals_swgl_then_torch_fused_adamw():
    nets = [_model(device="cuda"), _model(device="cuda")]
    opt = _make("adamw", nets[0].parameters(), "v2", fused=True, **ADAMW)
    mod = SWGL(nets[1].parameters(), rule="v2", mode="grad", **_sw("v2"))
    base = torch.optim.AdamW(nets[1].parameters(), **ADAMW, fused=True)
    for i in range(4):
        for net in nets:
            _backward(net, i)
        opt.step()
        mod.step()
        base.step()
    assert _max_diff(*nets) < 1e-5


def test_load_state_dict_keeps_fp32_state_for_bf16_params():
    net = _model(torch.bfloat16)
    opt = _make("adamw", net.parameters(), "v2", **ADAMW)
    _backward(net, 0)
    opt.step()
    other = _make("adamw", _model(torch.bfloat16).parameters(), "v2", **ADAMW)
    other.load_state_dict(copy.deepcopy(opt.state_dict()))
    for state in other.state.values():
        assert state["exp_avg"].dtype == state["swgl_stability"].dtype == torch.float32


def test_a_checkpoint_without_a_newer_option_loads_with_its_default():
    net = _model()
    opt = swgl.optim.AdamW(net.parameters(), lr=1e-3)
    _backward(net, 0)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    for group in saved["param_groups"]:
        del group["swgl"]["consolidation_horizon"]     # as saved before the option existed
    other = swgl.optim.AdamW(_model().parameters(), lr=1e-3)
    other.load_state_dict(saved)
    assert other.param_groups[0]["swgl"] == opt.param_groups[0]["swgl"]
    _backward(net, 1)
    other.step()


def test_a_state_dict_of_a_torch_optimizer_is_refused():
    net = _model()
    saved = torch.optim.AdamW(net.parameters(), lr=1e-3).state_dict()
    opt = swgl.optim.AdamW(net.parameters(), lr=1e-3)
    with pytest.raises(ValueError, match="param group 0 has no 'swgl' options"):
        opt.load_state_dict(saved)
    assert "swgl" in opt.param_groups[0]


@pytest.mark.parametrize("key, value", [("alpha", 1.5), ("rule", "v9"), ("colour", 1)])
def test_a_checkpoint_with_a_bad_swgl_option_raises_and_loads_nothing(key, value):
    net = _model()
    opt = swgl.optim.AdamW(net.parameters(), lr=1e-3)
    _backward(net, 0)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    saved["param_groups"][0]["swgl"][key] = value
    other = swgl.optim.AdamW(_model().parameters(), lr=1e-3)
    before = copy.deepcopy(other.state_dict())
    with pytest.raises(ValueError, match="state_dict param group 0"):
        other.load_state_dict(saved)
    assert other.state_dict() == before


# -- v5 to v7: their detector, consolidation and pull (v6, v7: and path) around the fused
# -- optimizer step ---------------------------------------------------------------------------

#: the rules that consolidate at detected shifts
CONSOLIDATING = ("v5", "v6", "v7")

#: the targets grow 30-fold at SHIFT_AT: v5's detector fires (after its refractory 50 steps)
SHIFT_AT, V5_STEPS = 60, 72


def _v5_stream(net, i):
    _backward(net, i, scale=30.0 if i >= SHIFT_AT else 1.0)


def _assert_consolidated(state, prefix):
    det = state[prefix + "detector"]
    assert float(det[3]) >= SHIFT_AT, "the detector did not fire at the shift"
    assert float(state[prefix + "consolidated"].abs().sum()) > 0
    if prefix + "path" in state:   # v6: summed again since the shift
        assert float(state[prefix + "path"].abs().sum()) > 0


@pytest.mark.parametrize("rule", CONSOLIDATING)
@pytest.mark.parametrize("horizon", [None, 5.0])
@pytest.mark.parametrize("kind", ["adamw", "sgd1"])
def test_v5_equals_the_wrapper_across_a_detected_shift(kind, horizon, rule):
    fused_net, ref_net = _model(), _model()
    fade = {"consolidation_horizon": horizon}
    if kind == "adamw":
        opt = _make("adamw", fused_net.parameters(), rule, "update", **ADAMW)
        base = torch.optim.AdamW(ref_net.parameters(), **ADAMW, foreach=True)
    else:
        opt = _make("sgd", fused_net.parameters(), rule, "update", **SGD_KW[1])
        base = torch.optim.SGD(ref_net.parameters(), **SGD_KW[1])
    opt.param_groups[0]["swgl"] = optim_base.check_swgl(fade, opt.param_groups[0]["swgl"])
    ref = SWGL.wrap(base, rule=rule, **SW, **fade)
    for i in range(V5_STEPS):
        for net, o in ((fused_net, opt), (ref_net, ref)):
            _v5_stream(net, i)
            o.step()
    assert _max_diff(fused_net, ref_net) < 1e-5
    for p, q in zip(fused_net.parameters(), ref_net.parameters()):
        _assert_consolidated(opt.state[p], "swgl_")
        for name, _ in RULES[rule].state:
            torch.testing.assert_close(opt.state[p]["swgl_" + name], ref.state[q][name],
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", CONSOLIDATING)
def test_v5_nonfinite_grad_skips_the_pull_and_the_consolidation(path, rule):
    net = _model(device=DEV if path else "cpu")
    opt = _make("adamw", net.parameters(), rule, "update", fused=path, **ADAMW)
    for i in range(V5_STEPS):
        _v5_stream(net, i)
        opt.step()
    _assert_consolidated(opt.state[net[0].weight], "swgl_")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in net.parameters()}
    _backward(net, 999, scale=1e3)   # a jump the detector would take as a shift, but for the nan
    net[2].bias.grad[0] = float("nan")
    opt.step()
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    for p in net.parameters():
        for k, v in opt.state[p].items():
            assert torch.equal(v, state[id(p)][k]), k


@needs_kernels
@pytest.mark.parametrize("rule", CONSOLIDATING)
@pytest.mark.parametrize("kind", ["adamw", "sgd1"])
def test_triton_v5_matches_foreach_across_a_detected_shift(kind, rule):
    kw = ADAMW if kind == "adamw" else SGD_KW[1]
    nets, opts = _pair(kind[:-1] if kind != "adamw" else kind, rule, "update", torch.float32, kw)
    for i in range(V5_STEPS):
        for net, opt in zip(nets, opts):
            _v5_stream(net, i)
            opt.step()
    assert _max_diff(*nets) < 1e-5
    for p, q in zip(*(n.parameters() for n in nets)):
        st, ref = opts[0].state[p], opts[1].state[q]
        _assert_consolidated(st, "swgl_")
        for key in ref:
            torch.testing.assert_close(st[key].cpu(), ref[key].cpu(), rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not (torch.cuda.is_available() and kernels.triton_available()),
                    reason="needs CUDA and Triton")
@pytest.mark.parametrize("rule", CONSOLIDATING)
def test_triton_v5_step_never_syncs_after_a_shift(rule):
    net = _model(device="cuda")
    opt = _make("adamw", net.parameters(), rule, "update", fused=True, **ADAMW)
    for i in range(V5_STEPS):
        _v5_stream(net, i)
        opt.step()
    _assert_consolidated(opt.state[net[0].weight], "swgl_")
    torch.cuda.synchronize()
    _backward(net, 999, scale=1e3)
    torch.cuda.set_sync_debug_mode("error")
    try:
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
