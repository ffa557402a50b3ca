"""Malformed checkpoints (issue 9): ``load_state_dict`` on both optimizer classes.

Every corruption of a real state_dict (wrong or missing keys, shapes, dtypes, devices, group
counts, non-dict entries, bad option values) raises ValueError or TypeError with a message,
never another exception, and leaves the optimizer exactly as it was: SWGL's state, the param
groups' options and (for the wrapper) the base optimizer's state. A clean load afterwards still
works, and a checkpoint file cut short fails in ``torch.load`` before anything is touched.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from swgl import SWGL
from swgl.rules import DEFAULT_RULE
from swgl.state import STORAGES

META = torch.device("meta")  # a device with no data: stands in for "another device" on CPU


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


def _trained(kind: str, storage: str = "fp32", rule: str = DEFAULT_RULE):
    """(model, optimizer, base) after two steps with two param groups."""
    model = _model()
    groups = [{"params": list(model[0].parameters())},
              {"params": list(model[2].parameters()), "lr": 0.05}]
    if kind == "wrapper":
        base = torch.optim.AdamW(groups, lr=1e-2)
        opt = SWGL.wrap(base, alpha=0.9, storage=storage, rule=rule)
    else:
        base = torch.optim.SGD(groups, lr=0.1)
        opt = SWGL([{"params": g["params"]} for g in groups], alpha=0.9, storage=storage,
                   rule=rule)
    for i in range(2):
        x = torch.randn(5, 6, generator=torch.Generator().manual_seed(i))
        opt.zero_grad()
        base.zero_grad()
        model(x).square().mean().backward()
        opt.step()
        if kind == "two-object":
            base.step()
    return model, opt, base


def _fingerprint(opt, base) -> list:
    """Everything a load could change: SWGL state, group options, the base's state."""
    def tensors(state):
        return [(i, k, v.clone()) for i, s in enumerate(state.values())
                for k, v in sorted(s.items()) if isinstance(v, torch.Tensor)]
    groups = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
    out = [len(opt.state), tensors(opt.state), copy.deepcopy(groups)]
    if base is not None and base is not opt:
        out += [tensors(base.state)]
    return out


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


# -- corruptions: each takes a deep copy of a state_dict and breaks it in place ----------------


def _swgl_keys(sd, prefix):
    """(param index, key) of every SWGL tensor in the state_dict."""
    return [(i, k) for i, entry in sd["state"].items() for k in entry
            if k.startswith(prefix) or (not prefix and k in ("step", *_ALL_KEYS))]


_ALL_KEYS = {k for s in STORAGES.values() for k in s.keys}


def corruptions(prefix: str):
    """(name, function) pairs; ``prefix`` is the wrapper's ``swgl_``."""
    def on_swgl_tensor(fn, valid=lambda key, t: False):
        """Corrupt one SWGL tensor; returns True if the result is still valid state."""
        # the step counter's own checks are test_bad_step_counters_are_rejected's
        def corrupt(sd, draw):
            keys = [(i, k) for i, k in _swgl_keys(sd, prefix) if k != prefix + "step"]
            i, k = draw(st.sampled_from(keys))
            sd["state"][i][k] = fn(sd["state"][i][k], draw)
            return valid(k, sd["state"][i][k])
        return corrupt

    def drop_key(sd, draw):
        i, k = draw(st.sampled_from(_swgl_keys(sd, prefix)))
        del sd["state"][i][k]

    def extra_key(sd, draw):
        i = draw(st.sampled_from(sorted(sd["state"])))
        sd["state"][i][prefix + draw(st.sampled_from(["stability_x", "momentum", "stability"]))
                       + "_bogus"] = torch.zeros(1)

    def bad_index(sd, draw):
        i = draw(st.sampled_from(sorted(sd["state"])))
        new = draw(st.sampled_from([99, -1, "weight", 2.5, None]))
        sd["state"][new] = sd["state"].pop(i)

    def entry_not_dict(sd, draw):
        i = draw(st.sampled_from(sorted(sd["state"])))
        sd["state"][i] = draw(st.sampled_from([None, 1.0, [1, 2], "state", torch.zeros(3)]))

    def drop_group(sd, draw):
        del sd["param_groups"][draw(st.integers(0, len(sd["param_groups"]) - 1))]

    def extra_group(sd, draw):
        sd["param_groups"].append(copy.deepcopy(sd["param_groups"][0]))

    def group_not_dict(sd, draw):
        sd["param_groups"][draw(st.integers(0, 1))] = draw(st.sampled_from([None, [], "g"]))

    def group_params(sd, draw):
        g = sd["param_groups"][draw(st.integers(0, 1))]
        g["params"] = draw(st.sampled_from([g["params"][:1], g["params"] * 2, []]))

    def bad_option(sd, draw):
        g = sd["param_groups"][draw(st.integers(0, 1))]
        key, value = draw(st.sampled_from([
            ("alpha", 1.5), ("alpha", "0.9"), ("alpha", float("nan")), ("eps", 0.0),
            ("max_boost", 0.5), ("max_boost", float("inf")), ("rule", "v9"),
            ("storage", "int3"), ("signal", "magic"), ("mode", "weights"), ("foreach", "yes"),
            ("lambda_reg", -1.0), ("shock", 0.5), ("max_damping", 0.1),
        ]))
        g[prefix + key] = value

    def other_storage(sd, draw):
        g = sd["param_groups"][draw(st.integers(0, 1))]
        current = g[prefix + "storage"]
        g[prefix + "storage"] = draw(st.sampled_from(sorted(set(STORAGES) - {current})))

    def top_level(sd, draw):
        what = draw(st.sampled_from(["drop_state", "drop_groups", "extra", "state_list",
                                     "groups_dict"]))
        if what == "drop_state":
            del sd["state"]
        elif what == "drop_groups":
            del sd["param_groups"]
        elif what == "extra":
            sd["scaler"] = {}
        elif what == "state_list":
            sd["state"] = list(sd["state"].values())
        else:
            sd["param_groups"] = dict(enumerate(sd["param_groups"]))

    tensor_fns = {
        "dtype": lambda t, d: t.to(d(st.sampled_from(
            [torch.float64, torch.float16, torch.int64, torch.uint8, torch.bool]
            if t.dtype != torch.uint8 else [torch.int16, torch.float32]))),
        "shape": lambda t, d: d(st.sampled_from([
            t.reshape(-1)[:0], torch.cat([t.reshape(-1), t.reshape(-1)[:1]]),
            t.reshape(1, -1), t.reshape(-1)[None].expand(2, -1).clone()])),
        "device": lambda t, d: t.to(META),
        "not a tensor": lambda t, d: d(st.sampled_from(
            [t.tolist(), None, "1.0", t.float().numpy()])),
        "nan": lambda t, d: (t.float().fill_(float("nan")) if t.is_floating_point()
                             else t.float().fill_(float("nan")).to(t.dtype)),
        "negative": lambda t, d: (t.clone().fill_(-1) if t.is_floating_point()
                                  else t.to(torch.int8).fill_(-1)),
    }
    # NaN cast to uint8 is some code, blockwise8's log2 offsets, an anchor and v6's path
    # integral may be negative, and filling an empty tensor (factored's column state of a
    # 1-D param) changes nothing
    valid = {
        "nan": lambda key, t: t.dtype == torch.uint8 or t.numel() == 0,
        "negative": lambda key, t: (key.endswith("log2_lo") or key.endswith("anchor")
                                    or key.endswith("path") or t.numel() == 0),
    }
    return {
        **{f"tensor {name}": on_swgl_tensor(fn, *[valid[name]] if name in valid else [])
           for name, fn in tensor_fns.items()},
        "drop key": drop_key, "extra key": extra_key, "bad index": bad_index,
        "entry not a dict": entry_not_dict, "drop group": drop_group,
        "extra group": extra_group, "group not a dict": group_not_dict,
        "group params": group_params, "bad option": bad_option,
        "other storage": other_storage, "top level": top_level,
    }


def _expect_clean_failure(opt, base, bad, may_accept: bool) -> None:
    before = _fingerprint(opt, base)
    try:
        opt.load_state_dict(bad)
    except (ValueError, TypeError) as exc:
        assert str(exc), "the error has no message"
    else:
        assert may_accept, "a corrupt state_dict was accepted"
        return
    after = _fingerprint(opt, base)
    assert _same(before, after), "a failed load changed the optimizer"


KINDS = ["two-object", "wrapper"]
_SAVED = {}


#: the default rule, and v5 for its further state tensors (consolidated, anchor, detector)
RULE_NAMES = sorted({DEFAULT_RULE, "v5"})


def _saved(kind, storage, rule=DEFAULT_RULE):
    if (kind, storage, rule) not in _SAVED:
        _, opt, _ = _trained(kind, storage, rule)
        _SAVED[kind, storage, rule] = opt.state_dict()
    return _SAVED[kind, storage, rule]


@pytest.mark.parametrize("rule", RULE_NAMES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("name", sorted(corruptions("")))
@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_malformed_state_dict_fails_cleanly(kind, name, rule, data):
    storage = data.draw(st.sampled_from(sorted(STORAGES)), label="storage")
    prefix = "swgl_" if kind == "wrapper" else ""
    _, opt, base = _trained(kind, storage, rule)
    bad = copy.deepcopy(_saved(kind, storage, rule))
    still_valid = corruptions(prefix)[name](bad, data.draw)
    _expect_clean_failure(opt, base, bad, may_accept=bool(still_valid))
    # and the optimizer still loads a good checkpoint afterwards, exactly
    good = _saved(kind, storage, rule)
    opt.load_state_dict(copy.deepcopy(good))
    assert _same(opt.state_dict()["state"], good["state"])


@pytest.mark.parametrize("kind", KINDS)
def test_every_corruption_kind_is_rejected(kind):
    """Deterministic spot checks that each corruption really raises (not just 'may')."""
    prefix = "swgl_" if kind == "wrapper" else ""
    key = prefix + "stability"
    cases = {
        "dtype": lambda sd: sd["state"][0].__setitem__(key, sd["state"][0][key].double()),
        "shape": lambda sd: sd["state"][0].__setitem__(key, sd["state"][0][key][:2]),
        "device": lambda sd: sd["state"][0].__setitem__(key, sd["state"][0][key].to(META)),
        "step shape": lambda sd: sd["state"][0].__setitem__(prefix + "step", torch.zeros(2)),
        "missing key": lambda sd: sd["state"][0].pop(key),
        "missing group": lambda sd: sd["param_groups"].pop(),
        "entry not a dict": lambda sd: sd["state"].__setitem__(0, [1.0]),
        "bad option": lambda sd: sd["param_groups"][1].__setitem__(prefix + "alpha", 2.0),
    }
    for what, corrupt in cases.items():
        _, opt, base = _trained(kind)
        bad = copy.deepcopy(opt.state_dict())
        corrupt(bad)
        before = _fingerprint(opt, base)
        with pytest.raises((ValueError, TypeError)):
            opt.load_state_dict(bad)
            pytest.fail(f"{what}: accepted")
        assert _same(before, _fingerprint(opt, base)), f"{what}: partial load"


@pytest.mark.parametrize("kind", KINDS)
def test_truncated_checkpoint_file_fails_before_loading(kind, tmp_path):
    _, opt, base = _trained(kind)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    data = buf.getvalue()
    before = _fingerprint(opt, base)
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        path = tmp_path / "ckpt.pt"
        path.write_bytes(data[:cut])
        with pytest.raises(Exception) as exc:  # torch.load's own error (pickle, zip)
            opt.load_state_dict(torch.load(path, weights_only=True))
        assert not isinstance(exc.value, (AssertionError, AttributeError, KeyError))
    assert _same(before, _fingerprint(opt, base))
    # the full file loads, with weights_only (plain tensors and containers)
    (tmp_path / "ckpt.pt").write_bytes(data)
    opt.load_state_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("step", ["meta", "nan", "inf", "negative", "fraction"])
def test_bad_step_counters_are_rejected(kind, step):
    prefix = "swgl_" if kind == "wrapper" else ""
    values = {"meta": torch.tensor(1.0, device=META), "nan": torch.tensor(float("nan")),
              "inf": torch.tensor(float("inf")), "negative": torch.tensor(-1.0),
              "fraction": torch.tensor(0.5)}
    _, opt, base = _trained(kind)
    bad = copy.deepcopy(opt.state_dict())
    bad["state"][0][prefix + "step"] = values[step]
    before = _fingerprint(opt, base)
    with pytest.raises(ValueError, match="step"):
        opt.load_state_dict(bad)
    assert _same(before, _fingerprint(opt, base))
