"""swgl.groups: layer-aware param groups (seed 001, flaw #10)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from swgl import SWGL, SWGLWrapper
from swgl.groups import CATEGORIES, classify, merge, param_groups, swgl_options

# the default rule (v6): no damping and no pull, steps left as the base makes them
UNMODULATED = dict(lambda_reg=0.0, consolidation=0.0)
V2_UNMODULATED = dict(max_boost=1.0, max_damping=1.0)


class LlamaRMSNorm(nn.Module):  # a norm torch does not know, recognised by its class name
    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.bag = nn.EmbeddingBag(10, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.bn = nn.BatchNorm1d(8)
        self.gn = nn.GroupNorm(2, 8)
        self.ln = nn.LayerNorm(8)
        self.rms = nn.RMSNorm(8)
        self.hf_rms = LlamaRMSNorm(8)
        self.fc = nn.Linear(8, 10)
        self.head = nn.Linear(8, 10, bias=False)
        self.head.weight = self.emb.weight  # tied: belongs to its first owner, the embedding
        self.pos = nn.Parameter(torch.zeros(4, 8))
        self.frozen = nn.Linear(8, 8)
        self.frozen.requires_grad_(False)

    def forward(self, tokens):
        h = self.emb(tokens) + self.pos                        # (B, 4, 8)
        h = h + self.bag(tokens).unsqueeze(1)
        h = self.conv(h.transpose(1, 2))
        h = self.gn(self.bn(h)).transpose(1, 2)
        h = self.hf_rms(self.rms(self.ln(h)))
        return self.fc(h).mean(1) + self.head(h).mean(1)


def _names(groups) -> dict[str, list[str]]:
    return {c: [n for n, _ in named] for c, named in groups.items()}


def test_classify_by_module_type():
    model = Tiny()
    got = _names(classify(model))
    assert got == {
        "weights": ["pos", "conv.weight", "fc.weight"],  # model.parameters() order
        "biases": ["conv.bias", "fc.bias"],
        "norms": ["bn.weight", "bn.bias", "gn.weight", "gn.bias", "ln.weight", "ln.bias",
                  "rms.weight", "hf_rms.weight"],
        "embeddings": ["emb.weight", "bag.weight"],
    }


def test_every_trainable_param_exactly_once():
    model = Tiny()
    groups = param_groups(model)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters() if p.requires_grad}


def test_overrides_move_params_by_glob():
    got = _names(classify(Tiny(), overrides={"pos": "embeddings", "fc.*": "weights"}))
    assert got["embeddings"] == ["pos", "emb.weight", "bag.weight"]
    assert "fc.bias" in got["weights"] and "fc.bias" not in got["biases"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(biases=dict(max_boots=1.0)), ValueError, r"biases has unknown SWGL .*max_boots"),
        (dict(norms=dict(lr=0.1)), ValueError, r"norms has unknown SWGL option.*'lr'"),
        (dict(norms=dict(alpha=1.5)), ValueError, r"norms: alpha must be in"),
        (dict(weights=dict(rule="v9")), ValueError, r"weights: rule"),
        (dict(embeddings=[("alpha", 0.9)]), TypeError, r"embeddings must be a dict"),
        (dict(overrides={"pos": "bias"}), ValueError, r"overrides\['pos'\] must be one of"),
        (dict(overrides={"nothing.*": "norms"}), ValueError, r"match no trainable parameter"),
        (dict(for_wrapper="yes"), TypeError, r"for_wrapper must be a bool"),
        # read only from the optimizer's constructor: a group's value would be ignored
        (dict(weights=dict(cuda_graphs=True)), ValueError,
         r"weights\['cuda_graphs'\]=True: cuda_graphs is not a per-group option; pass it to "
         r"the optimizer's constructor"),
        (dict(norms=dict(scaler=None)), ValueError, r"norms\['scaler'\]=None: scaler is not"),
    ],
)
def test_errors_name_the_culprit(kwargs, error, match):
    with pytest.raises(error, match=match):
        param_groups(Tiny(), **kwargs)


def test_not_a_module():
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        param_groups([nn.Parameter(torch.ones(2))])


def test_options_are_swgls_own():
    assert {"alpha", "max_boost", "max_damping", "rule", "lambda_reg"} <= set(swgl_options())
    assert not {"params", "scaler", "cuda_graphs"} & set(swgl_options())
    assert CATEGORIES == ("weights", "biases", "norms", "embeddings")


def _backward(model: nn.Module) -> None:
    torch.manual_seed(1)
    model(torch.randint(0, 10, (6, 4))).pow(2).mean().backward()


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("api", ["two-object", "wrapper"])
def test_unmodulated_categories_keep_their_grads(api):
    torch.manual_seed(0)
    model = Tiny()
    kw = dict(biases=V2_UNMODULATED, norms=V2_UNMODULATED, embeddings=dict(alpha=0.5))
    grad_mode = dict(rule="v2", signal="relative", mode="grad")  # p.grad shows the scale
    if api == "two-object":
        opt = SWGL(param_groups(model, **kw), **grad_mode)
    else:  # lr=0 keeps the weights, so the grads left in p.grad are the modulated ones
        opt = SWGLWrapper(param_groups(model, **kw, for_wrapper=True), base=torch.optim.SGD,
                          base_kwargs={"lr": 0.0}, **grad_mode)
    _backward(model)
    raw = _grads(model)
    opt.step()
    mod = _grads(model)
    named = _names(classify(model))
    for n in named["biases"] + named["norms"]:
        torch.testing.assert_close(mod[n], raw[n], rtol=0, atol=0)
    for n in named["weights"] + named["embeddings"]:
        assert not torch.equal(mod[n], raw[n]), n
    pre = "" if api == "two-object" else "swgl_"
    by_cat = dict(zip(CATEGORIES, opt.param_groups))
    assert by_cat["embeddings"][pre + "alpha"] == 0.5
    assert by_cat["weights"][pre + "alpha"] == 0.99  # v2's default (the seed's)


def test_default_rule_categories_can_switch_damping_and_pull_off():
    """Under the default rule (v6), ``lambda_reg=0, consolidation=0`` leaves a category's steps
    plain SGD's (up to rounding) at every step, across a detected shift; the weights' are not."""
    torch.manual_seed(0)
    model = Tiny()
    off = dict(lambda_reg=0.0, consolidation=0.0)
    opt = SWGL.wrap(torch.optim.SGD(param_groups(model, biases=off, norms=off,
                                                 embeddings=off, for_wrapper=True), lr=0.05))
    named = _names(classify(model))
    params = dict(model.named_parameters())
    worst = {"off": 0.0, "weights": 0.0}
    for step in range(70):              # inputs change at step 55: the default's detector fires
        opt.zero_grad()
        low, scale = (0, 1.0) if step < 55 else (5, 10.0)
        x = torch.randint(low, low + 5, (6, 4), generator=torch.Generator().manual_seed(step))
        (scale * model(x).pow(2).mean()).backward()
        plain = {n: (p - 0.05 * p.grad).detach() for n, p in params.items() if p.grad is not None}
        opt.step()
        for n, target in plain.items():
            kind = "weights" if n in named["weights"] else "off"
            worst[kind] = max(worst[kind], float((params[n].detach() - target).abs().max()))
    assert any(float(opt.state[p]["detector"][3]) > 0 for p in model.parameters())
    assert worst["off"] < 1e-6 < 1e-4 < worst["weights"], worst


def test_the_wrapper_refuses_groups_built_without_its_prefix():
    """Unprefixed SWGL options in a base's groups would be ignored: an error, not a no-op."""
    groups = param_groups(Tiny(), biases=dict(lambda_reg=0.0))
    with pytest.raises(ValueError, match=r"param group 1 has SWGL option\(s\) \['lambda_reg'\] "
                                         r"without the 'swgl_' prefix.*for_wrapper=True"):
        SWGL.wrap(torch.optim.SGD(groups, lr=0.05))
    opt = SWGL.wrap(torch.optim.SGD(groups[:1], lr=0.05))
    with pytest.raises(ValueError, match="param group 1 has SWGL option"):
        opt.add_param_group(groups[1])
    assert len(opt.param_groups) == len(opt.base.param_groups) == 1  # nothing was added


def test_category_options_are_checked_against_a_rule_that_reads_them():
    with pytest.raises(ValueError, match="biases: signal='fisher' means nothing to rule 'v6'"):
        param_groups(Tiny(), biases=dict(signal="fisher", consolidation=0.0))
    with pytest.raises(ValueError, match="norms: consolidation must be"):
        param_groups(Tiny(), norms=dict(consolidation=-1.0))


def test_wrapper_keys_never_touch_the_base_options():
    model = Tiny()
    groups = param_groups(model, norms=dict(eps=1e-3), for_wrapper=True)
    base = torch.optim.AdamW(groups, lr=1e-3, eps=1e-7)
    opt = SWGL.wrap(base)
    norms = opt.param_groups[CATEGORIES.index("norms")]
    assert norms["swgl_eps"] == 1e-3 and norms["eps"] == 1e-7
    assert opt.param_groups[0]["swgl_eps"] == 1e-8


def _weight_decay_groups(model, wd):
    """timm's param_groups_weight_decay: no decay for 1-D params and biases."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": wd}]


def test_merge_with_weight_decay_groups():
    model = Tiny()
    swgl_groups = param_groups(model, biases=UNMODULATED, norms=UNMODULATED, for_wrapper=True)
    merged = merge(_weight_decay_groups(model, 0.05), swgl_groups)
    seen = [id(p) for g in merged for p in g["params"]]
    assert sorted(seen) == sorted(id(p) for g in swgl_groups for p in g["params"])
    cat = {id(p): c for c, named in classify(model).items() for _, p in named}
    for g in merged:
        cats = {cat[id(p)] for p in g["params"]}
        assert len(cats) == 1  # each merged group sits inside one SWGL category ...
        assert len({p.ndim <= 1 for p in g["params"]}) == 1  # ... and one decay group
        if cats & {"biases", "norms"}:
            assert g["swgl_lambda_reg"] == 0.0 and g["weight_decay"] == 0.0
        if cats == {"weights"} and g["params"][0].ndim > 1:
            assert g["weight_decay"] == 0.05 and "swgl_lambda_reg" not in g
    opt = SWGLWrapper(merged, base=torch.optim.AdamW, base_kwargs={"lr": 1e-2})
    _backward(model)
    opt.step()  # trains


def test_merge_errors():
    model = Tiny()
    a = param_groups(model)
    with pytest.raises(ValueError, match="same params"):
        merge(a, [{"params": [next(model.parameters())]}])
    with pytest.raises(ValueError, match="disagree on 'lr'"):
        merge([{"params": list(a[0]["params"]), "lr": 1.0}] + a[1:],
              [{"params": [p for g in a for p in g["params"]], "lr": 2.0}])
    with pytest.raises(ValueError, match="more than one group"):
        merge([{"params": a[0]["params"]}, {"params": a[0]["params"]}])
    with pytest.raises(ValueError, match="at least one"):
        merge()
