"""The CPU's fused path (swgl.kernels.compiled): when it is picked, that it agrees with foreach
through both classes, that its non-finite check sees every inf and NaN, and that the CPU keeps
its snapshot copies between steps. Its parity with the single and foreach variants, phase by
phase, is in test_rule_v4.py."""

import pytest
import torch
import torch.nn as nn

from swgl import SWGL, functional
from swgl.kernels import compiled
from swgl.rules import RULES, Hyper

pytestmark = pytest.mark.skipif(
    not compiled.available(), reason="torch.compile needs a C++ compiler (apt install g++)")

HP = Hyper(alpha=0.999, lambda_reg=3.0, eps=1e-8, max_boost=10.0, mode="update")


def _params(*shapes):
    return [nn.Parameter(torch.randn(s)) for s in shapes]


def test_fused_none_compiles_large_cpu_groups_only():
    v4 = RULES["v4"]
    large = _params((1024, 1024), (1024,))
    small = _params((256, 256), (256,))
    assert functional._pick(v4.before, "v4", large, HP, True, None) is v4.before.fused
    assert functional._pick(v4.before, "v4", small, HP, True, None) is v4.before.foreach
    assert functional._pick(v4.before, "v4", large, HP, True, False) is v4.before.foreach
    assert functional._pick(v4.before, "v4", large, HP, False, None) is v4.before.single
    # fused=True compiles whatever the size; rules without a CPU path keep foreach
    assert functional._pick(v4.before, "v4", small, HP, True, True) is v4.before.fused
    v2 = RULES["v2"]
    assert functional._pick(v2.before, "v2", large, HP, True, None) is v2.before.foreach


def test_split_sends_small_odd_and_mismatched_tensors_to_foreach():
    n = compiled.MIN_NUMEL
    p = [torch.zeros(n), torch.zeros(n - 1), torch.zeros(2 * n, dtype=torch.float64),
         torch.zeros(n, 2).t(), torch.zeros(n)]
    s = [torch.zeros(n), torch.zeros(n - 1), torch.zeros(2 * n), torch.zeros(2, n),
         torch.zeros(n + 1)]
    assert compiled.split(p, s) == ([0], [1, 2, 3, 4])


def _train(fused, steps=4, wrap=False, bad_step=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 1024), nn.Tanh(), nn.Linear(1024, 3))
    x, y = torch.randn(16, 1024), torch.randint(0, 3, (16,))
    base = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    opt = SWGL.wrap(base, fused=fused) if wrap else SWGL(model.parameters(), fused=fused)
    seen = []
    for t in range(steps):
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        if t == bad_step:
            model[0].weight.grad[5, 7] = float("nan")
        if wrap:
            opt.step()
        else:
            opt.step()
            base.step()
        seen.append(opt._kept_snapshots[id(opt.param_groups[0])][-1])
    return model, opt, seen


@pytest.mark.parametrize("wrap", [False, True])
def test_compiled_step_matches_foreach_through_the_classes(wrap):
    ref, ref_opt, _ = _train(False, wrap=wrap)
    out, opt, seen = _train(None, wrap=wrap)
    # four steps of momentum SGD: the EMA's and the path's sums, added in another order,
    # differ by float rounding
    for a, b in zip(ref.parameters(), out.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ref_opt.stability(a), opt.stability(b), rtol=1e-4, atol=1e-12)
    # the CPU's snapshot copies are the same tensors at every step
    assert all(s is seen[0] for s in seen)
    assert [c.data_ptr() for c in seen[0]] == [c.data_ptr() for c in seen[-1]]


def test_a_nonfinite_grad_skips_the_compiled_step():
    model, opt, _ = _train(None, steps=2)
    stab = [opt.stability(p).clone() for p in model.parameters()]
    weights = [p.detach().clone() for p in model.parameters()]
    skipped, skipped_opt, _ = _train(None, steps=3, bad_step=2)
    for q, s in zip(skipped.parameters(), stab):
        assert torch.equal(skipped_opt.stability(q), s)  # the EMA did not move
    # the NaN grad went on to the base optimizer (as without SWGL), the rest moved as SGD did
    assert torch.isnan(skipped[0].weight).any()
    assert not torch.equal(skipped[2].weight, weights[-2])


def test_the_functions_really_compile_here():
    # the fallback to the eager formula must not hide a toolchain that cannot build
    _train(None, steps=1)
    assert compiled.failed() is None


def test_a_compile_failure_falls_back_to_the_eager_formula(monkeypatch, caplog):
    def broken(fn, **kwargs):
        def call(*args):
            raise RuntimeError("no compiler today")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    monkeypatch.setattr(compiled, "_failed", [])
    compiled.compiled.cache_clear()
    try:
        ref, _, _ = _train(False, steps=2)
        with caplog.at_level("WARNING", logger="swgl.kernels.compiled"):
            out, _, _ = _train(True, steps=2)
        assert "no compiler today" in compiled.failed()
        assert "runs eagerly" in caplog.text
        for a, b in zip(ref.parameters(), out.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    finally:
        compiled.compiled.cache_clear()


def test_swgl_optim_compiles_large_cpu_groups_and_matches_its_foreach(monkeypatch):
    import swgl.optim
    from swgl.optim import _base

    def train(fused):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(1024, 1024), nn.Tanh(), nn.Linear(1024, 3))
        x, y = torch.randn(16, 1024), torch.randint(0, 3, (16,))
        opt = swgl.optim.AdamW(model.parameters(), lr=1e-3, fused=fused)
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        return model

    picked = []
    real = _base._compiles_on_cpu
    monkeypatch.setattr(_base, "_compiles_on_cpu", lambda work: picked.append(real(work))
                        or picked[-1])
    out = train(None)
    assert picked and all(picked)
    ref = train(False)
    assert not picked[-1]
    for a, b in zip(ref.parameters(), out.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_the_compiled_step_is_deterministic():
    # bit-exact resumes rely on it: the same inputs give the same bits
    a, opt_a, _ = _train(None, steps=3)
    b, opt_b, _ = _train(None, steps=3)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(opt_a.stability(p), opt_b.stability(q))


def test_a_resumed_compiled_run_is_bit_exact():
    """Cut past a detected shift (new labels from step 55), so the checkpoint
    holds the default's importance, anchor, path and detector, not only its EMA."""
    import copy

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 1024), nn.Tanh(), nn.Linear(1024, 3))
    x, y = torch.randn(16, 1024), torch.randint(0, 3, (16,))

    def run(model, opt, steps):
        for t in steps:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y if t < 55 else (y + 1) % 3).backward()
            opt.step()

    opt = SWGL.wrap(torch.optim.AdamW(model.parameters(), lr=1e-3))
    run(model, opt, range(62))
    assert opt.shifts()[0]["last_shift"] > 55
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    run(model, opt, range(62, 66))

    torch.manual_seed(1)
    resumed = nn.Sequential(nn.Linear(1024, 1024), nn.Tanh(), nn.Linear(1024, 3))
    resumed.load_state_dict(saved_model)
    opt2 = SWGL.wrap(torch.optim.AdamW(resumed.parameters(), lr=1e-3))
    opt2.load_state_dict(saved_opt)
    run(resumed, opt2, range(62, 66))
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert torch.equal(value, opt2.state[q][key]), key
