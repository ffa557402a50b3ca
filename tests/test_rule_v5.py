"""Rule ``v5`` (swgl.rules.consolidation): v4 plus a pull toward the weights at detected
distribution shifts. Its detector on hand-made gradient streams, its variants against each
other, that it is v4 until a shift, that the pull holds what was consolidated, and that its
state survives a checkpoint bit-exactly."""

import copy
import math

import pytest
import torch
import torch.nn as nn

from swgl import RULES, SWGL, kernels
from swgl.kernels import compiled
from swgl.rules import Context, Hyper
from swgl.rules import consolidation as cons
from toy import IMPL_KW, resume_across_a_shift, step_across_a_shift_without_host_sync
from toy import train_across_a_shift as _train

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
IMPLS = ["single", "foreach"] + (["fused"] if compiled.available() else [])


def _detector(opt):
    return opt.state[opt.param_groups[0]["params"][0]]["detector"]


def _run_detector(norms):
    """Feed ``_detect`` the signals (capped g^2 sums) ``norms``; the steps it fires."""
    det, fired = torch.zeros(4), []
    for t, n in enumerate(norms, 1):
        new, shift = cons._detect(torch.tensor(n), det)
        det = new
        if bool(shift):
            fired.append(t)
    return fired, det


def test_v5_keeps_its_measured_defaults():
    opt = SWGL([torch.zeros(3, requires_grad=True)], rule="v5")
    group = opt.param_groups[0]
    assert (group["rule"], group["alpha"], group["lambda_reg"], group["mode"],
            group["consolidation"], group["consolidation_horizon"]) == (
        "v5", 0.999, 3.0, "update", 0.03, 20.0)


def test_detector_is_silent_on_a_stationary_stream():
    g = torch.Generator().manual_seed(0)
    norms = (1.0 + 0.5 * torch.rand(2000, generator=g)).tolist()     # noisy, no shift
    fired, det = _run_detector(norms)
    assert fired == []
    assert float(det[0]) == 2000


def test_detector_fires_at_each_jump_and_respects_the_refractory_period():
    norms = [1.0] * 300 + [4.0] * 300 + [1.0] * 300 + [6.0] * 300
    fired, _ = _run_detector(norms)
    assert len(fired) == 2
    assert 300 < fired[0] <= 310 and 900 < fired[1] <= 910
    # a 10x jump outlasts the refractory period (the slow EMA is still catching up): a
    # second shift, never closer than REFRACTORY steps to the first
    fired, _ = _run_detector([1.0] * 300 + [10.0] * 300)
    assert 300 < fired[0] <= 305 and len(fired) == 2
    assert fired[1] - fired[0] > cons.REFRACTORY
    # a jump inside the first WARMUP steps is not a shift
    fired, _ = _run_detector([1.0] * 20 + [100.0] * (cons.WARMUP - 20))
    assert fired == []


def test_the_warm_up_and_the_refractory_period_are_apart(monkeypatch):
    """``WARMUP`` holds the first shift back from the start, ``REFRACTORY`` the next from
    the last: a warm-up of 100 hides a jump at step 60 that the default's 50 finds, and
    leaves the refractory period after a shift as it was."""
    jump_at_60 = [1.0] * 60 + [10.0] * 30
    assert _run_detector(jump_at_60)[0] != []
    monkeypatch.setattr(cons, "WARMUP", 100)
    assert _run_detector(jump_at_60)[0] == []
    fired, _ = _run_detector([1.0] * 300 + [10.0] * 300)
    assert 300 < fired[0] <= 305 and len(fired) == 2
    assert cons.REFRACTORY < fired[1] - fired[0] < 100


@pytest.mark.parametrize("capped", [0, 1])
@pytest.mark.parametrize("scale", [1.0, 1024.0])
@pytest.mark.parametrize("impl", IMPLS)
def test_v4s_before_sums_the_detectors_signal_per_element(impl, scale, capped):
    """``n = sum over elements of min((g / scale)^2, R_MAX)``: a capped element counts R_MAX
    and the rest of its tensor still counts (the cap is per element, not per tensor's sum),
    in a large tensor (the CPU's compiled path sums it with BLAS unless it holds a capped
    element) or a small one. Asking for it leaves v4's own result as it was."""
    from swgl.rules.importance import R_MAX

    g = torch.Generator().manual_seed(0)
    shapes = [(257, 259), (7,), (3, 5)]     # the first large enough to compile on the CPU
    grads = [torch.randn(s, generator=g) for s in shapes]
    grads[capped].view(-1)[2] = 1e12        # g^2 = 1e24: capped
    want = sum(x.double().square().clamp(max=R_MAX).sum() for x in grads)
    grads = [(x * scale).to(DEVICE) for x in grads]
    hp = Hyper(alpha=0.9, lambda_reg=3.0, eps=1e-8, max_boost=10.0, mode="update")
    out = {}
    for ask in (False, True):
        params = [torch.zeros(s, device=DEVICE) for s in shapes]
        s = [torch.rand(x, generator=torch.Generator().manual_seed(1)).to(DEVICE)
             for x in shapes]
        ctx = Context(grad_scale=scale, g2_sum=[] if ask else None)
        aux = getattr(RULES["v4"].before, impl)(params, grads, {"stability": s},
                                                 [torch.ones(())] * 3, hp, ctx)
        out[ask] = (s, aux[0][0], ctx.g2_sum)
    assert out[False][2] is None and len(out[True][2]) == 1
    assert float(out[True][2][0]) == pytest.approx(float(want), rel=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(out[True][0], out[False][0]))
    assert torch.equal(out[True][1], out[False][1])       # k


def _detector_trace():
    """(signal, found) per step, through: a jump inside the refractory period (no shift), a
    shift after it (t_last set), the refractory period after it, a skipped step that would be
    a shift, then a second shift; ``found`` alternates between None and 0 (the step applies)
    and is 1 on the skipped step."""
    signals = [1.0] * 20 + [50.0] * 10 + [1.0] * 30 + [200.0] * 20 + [1.0] * 60 + [1e3] * 11
    found = [None if t % 2 else 0.0 for t in range(len(signals))]
    found[-11] = 1.0
    return signals, found


@pytest.mark.skipif(not kernels.can_fuse([torch.zeros(1, device=DEVICE)]),
                    reason="needs Triton on CUDA, or TRITON_INTERPRET=1 with Triton installed")
def test_the_detector_kernel_matches_its_reference():
    """triton_consolidation.detect (one launch: the detector's step and the skip flag's
    masking) against _detect and the masking in torch ops, step by step."""
    signals, found = _detector_trace()
    ref = torch.zeros(4, device=DEVICE)
    det = torch.zeros(4, device=DEVICE)
    fired, skipped = [], []
    for t, (n, flag) in enumerate(zip(signals, found), 1):
        n = torch.tensor(n, device=DEVICE)
        flag = None if flag is None else torch.full((1,), flag, device=DEVICE)
        before = det.clone()
        ref, want = cons._advance(n, [ref], flag, kernel=False)
        got_det, got = cons._advance(n, [det], flag, kernel=True)
        # a copy advanced: the state stays as it was until the caller stores the new values
        # (after a shift's consolidation has read the old ones: v7 reads the last shift)
        assert got_det is not det and torch.equal(det, before)
        det.copy_(got_det)
        torch.testing.assert_close(det, ref, rtol=1e-6, atol=0.0)
        assert bool(got) == bool(want), t
        assert got.dtype == torch.float32 and got.dim() == 0
        if bool(want):
            fired.append(t)
        if flag is not None and float(flag) != 0:
            skipped.append(t)
            assert torch.equal(det, before)          # a skipped step changes nothing
    applied = [t - (t > skipped[0]) for t in fired]   # the detector's own step count
    assert skipped == [len(signals) - 10]
    # no shift inside the refractory period; one at the jump after it; none within the
    # refractory period after a shift; the skipped step's jump is found at the next step
    assert len(fired) == 2 and 60 < fired[0] <= 63 and fired[1] == skipped[0] + 1
    assert float(det[3]) == applied[-1] and float(det[0]) == len(signals) - 1


def test_v5_is_v4_until_the_first_shift():
    m4, _ = _train("v4", n_steps=100, shift_at=10**9)
    m5, opt5 = _train("v5", n_steps=100, shift_at=10**9)
    for a, b in zip(m4.parameters(), m5.parameters()):
        assert torch.equal(a, b)
    assert float(_detector(opt5)[3]) == 0.0          # never consolidated


def test_a_shift_consolidates_and_the_pull_holds_the_old_weights():
    m4, _ = _train("v4")
    m5, opt5 = _train("v5")
    det = _detector(opt5)
    assert 120 < float(det[3]) <= 130                # the shift was found, no boundary given
    state = opt5.state[m5.weight]
    # one consolidation adds a term of mean 1 over the group (weight and bias)
    consolidated = torch.cat([opt5.state[p]["consolidated"].flatten() for p in m5.parameters()])
    assert float(consolidated.mean()) == pytest.approx(1.0, rel=1e-3)
    anchor = state["anchor"]
    # the pull keeps the weights nearer the anchor than v4 leaves them
    assert (m5.weight - anchor).norm() < 0.8 * (m4.weight - anchor).norm()


@pytest.mark.parametrize("horizon", [0.0, 20.0])
@pytest.mark.parametrize("impl", IMPLS[1:])
def test_variants_agree(impl, horizon):
    ref, opt_ref = _train("v5", impl="single", consolidation_horizon=horizon)
    got, opt_got = _train("v5", impl=impl, consolidation_horizon=horizon)
    for a, b in zip(ref.parameters(), got.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    for p_ref, p_got in zip(ref.parameters(), got.parameters()):
        for name in ("stability", "consolidated", "anchor", "detector"):
            torch.testing.assert_close(opt_ref.state[p_ref][name], opt_got.state[p_got][name],
                                       rtol=1e-5, atol=1e-6)


def _pull_inputs():
    """Params and a consolidated state: one tensor large enough to compile, one foreach."""
    g = torch.Generator().manual_seed(0)
    shapes = [(300, 300), (7,)]
    params = [torch.randn(s, generator=g) for s in shapes]
    state = {"consolidated": [torch.rand(s, generator=g) * 5 for s in shapes],
             "stability": [torch.rand(s, generator=g) for s in shapes],
             "anchor": [torch.randn(s, generator=g) for s in shapes]}
    return params, state


@pytest.mark.skipif(not compiled.available(), reason="needs torch.compile and a C++ compiler")
def test_the_fused_pull_matches_the_reference():
    """Compiled on the CPU (Triton's kernels under TRITON_INTERPRET=1)."""
    params, state = _pull_inputs()
    det = torch.tensor([100.0, 1.0, 1.0, 60.0])       # consolidated at step 60
    out = {}
    for variant in ("single", "foreach", "fused"):
        ps = [p.clone() for p in params]
        cons._pull(ps, state, det, 0.01, variant)
        out[variant] = ps
    for variant in ("foreach", "fused"):
        for a, b in zip(out["single"], out[variant]):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert not torch.equal(out["single"][0], params[0])      # it did pull


@pytest.mark.skipif(not kernels.can_fuse([torch.zeros(1, device=DEVICE)]),
                    reason="needs Triton on CUDA, or TRITON_INTERPRET=1 with Triton installed")
@pytest.mark.parametrize("programs", [None, 2])
def test_the_kernels_do_nothing_when_their_flag_is_off(programs, monkeypatch):
    """``programs``: the consolidation's strided grid held to 2 programs, each striding over
    several tiles."""
    from swgl.kernels import triton_consolidation as tc
    from swgl.kernels import triton_swgl

    if programs is not None:
        monkeypatch.setattr(triton_swgl, "_programs", lambda device: programs)

    g = torch.Generator().manual_seed(0)
    shapes = [(5000,), (3, 7)]
    params = [torch.randn(s, generator=g).to(DEVICE) for s in shapes]
    state = {k: [torch.rand(s, generator=g).to(DEVICE) for s in shapes]
             for k in ("consolidated", "stability", "anchor")}
    tables, rest = cons._kernel_tables(params, state)
    assert tables and not rest
    before = [t.clone() for t in params + sum(state.values(), [])]
    off, on = torch.zeros((), device=DEVICE), torch.ones((), device=DEVICE)
    for lau in tables:
        tc.consolidate(lau, off.bool(), on, 0.8)
        tc.pull(lau, 0.01 * off)
    assert all(torch.equal(a, b) for a, b in zip(params + sum(state.values(), []), before))
    for lau in tables:
        tc.consolidate(lau, on.bool(), 2 * on, 0.8)
    for f, f0, s, mu, p in zip(state["consolidated"], before[2:4], state["stability"],
                               state["anchor"], params):
        torch.testing.assert_close(f, 0.8 * f0 + 2 * s)
        assert torch.equal(mu, p)


def test_a_flagged_step_leaves_the_detector_and_the_consolidation_as_they_were():
    p = [torch.zeros(4)]
    state = {"stability": [torch.ones(4)], "consolidated": [torch.zeros(4)],
             "anchor": [torch.zeros(4)], "detector": [torch.tensor([100.0, 1.0, 1.0, 0.0])]}
    before = copy.deepcopy(state)
    hp = Hyper(alpha=0.9, lambda_reg=3.0, eps=1e-8, max_boost=10.0, mode="update")
    grads = [torch.full((4,), 100.0)]                 # would fire: a 10^4 jump
    RULES["v5"].before.foreach(p, grads, state, [torch.ones(())], hp,
                               Context(found=torch.ones(1)))
    for name in state:
        assert torch.equal(state[name][0], before[name][0]), name


@pytest.mark.parametrize("impl", ["single", "foreach"])
def test_a_flagged_step_pulls_nothing(impl):
    """The skip flag reaches the after phase through ``aux``: a consolidated group whose step
    is skipped keeps its weights, where the same step unflagged pulls them to the anchor."""
    hp = Hyper(alpha=0.9, lambda_reg=3.0, eps=1e-8, max_boost=10.0, mode="update",
               consolidation=0.5)
    moved = {}
    for flag in (1.0, 0.0):
        p = [torch.ones(4)]
        state = {"stability": [torch.ones(4)], "consolidated": [torch.ones(4)],
                 "anchor": [torch.zeros(4)],
                 "detector": [torch.tensor([100.0, 1.0, 1.0, 60.0])]}   # consolidated at 60
        grads = [torch.full((4,), 1e-3)]
        aux = getattr(RULES["v5"].before, impl)(p, grads, state, [torch.ones(())], hp,
                                                 Context(found=torch.full((1,), flag)))
        snapshots = [x.clone() for x in p]                 # no base step: only the pull moves
        getattr(RULES["v5"].after, impl)(p, snapshots, state, [torch.ones(())], aux, hp,
                                         Context())
        moved[flag] = not torch.equal(p[0], torch.ones(4))
    assert moved == {1.0: False, 0.0: True}


def test_a_checkpoint_resumes_bit_exactly_after_a_shift():
    full, model, resumed = resume_across_a_shift("v5")
    assert float(_detector(resumed)[3]) > 0
    for a, b in zip(full.parameters(), model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("variant", IMPLS)
def test_the_faded_pull_follows_its_formula(variant):
    """k = consolidation F min(1, horizon / (t - t_last + 1)): full strength within the
    horizon, faded after it."""
    params, state = _pull_inputs()
    for t, fade in ((70.0, 1.0), (160.0, 20.0 / 101.0)):      # consolidated at step 60
        ps = [p.clone() for p in params]
        cons._pull(ps, state, torch.tensor([t, 1.0, 1.0, 60.0]), 0.03, variant, horizon=20.0)
        for p, got, f, mu in zip(params, ps, state["consolidated"], state["anchor"]):
            k = 0.03 * fade * f
            torch.testing.assert_close(got, (p + k * mu) / (1.0 + k), rtol=1e-6, atol=1e-6)


def test_a_horizon_fades_the_pull_after_a_shift():
    m4, _ = _train("v4")
    held, opt = _train("v5", consolidation=0.1)
    faded, _ = _train("v5", consolidation=0.1, consolidation_horizon=10.0)
    anchor = opt.state[held.weight]["anchor"]
    dist = {name: float((m.weight.detach() - anchor).norm())
            for name, m in (("v4", m4), ("held", held), ("faded", faded))}
    assert dist["held"] < dist["faded"] < dist["v4"], dist


def test_consolidation_sets_the_pull_and_zero_turns_it_off():
    m4, _ = _train("v4")
    off, opt_off = _train("v5", consolidation=0.0)
    for a, b in zip(m4.parameters(), off.parameters()):
        assert torch.equal(a, b)                      # no pull: v4's trajectory exactly
    assert float(_detector(opt_off)[3]) > 0            # while the consolidation is still kept
    anchor = opt_off.state[off.weight]["anchor"]
    dist = {}
    for strength in (0.003, 0.01, 0.1):
        m, _ = _train("v5", consolidation=strength)
        dist[strength] = float((m.weight.detach() - anchor).norm())
    assert dist[0.1] < dist[0.01] < dist[0.003] < float((m4.weight.detach() - anchor).norm())


@pytest.mark.parametrize("options, match", [
    (dict(rule="v5", consolidation=-0.1), "consolidation"),
    (dict(rule="v5", consolidation=float("nan")), "consolidation"),
    (dict(rule="v4", consolidation=0.01), "means nothing to rule 'v4'"),
    (dict(rule="v5", consolidation_horizon=-1.0), "consolidation_horizon"),
    (dict(rule="v5", consolidation_horizon=float("inf")), "consolidation_horizon"),
    (dict(rule="v4", consolidation_horizon=20.0), "means nothing to rule 'v4'"),
])
def test_bad_consolidation_raises_naming_it(options, match):
    with pytest.raises(ValueError, match=match):
        SWGL([torch.zeros(3, requires_grad=True)], **options)
    with pytest.raises(ValueError, match=match):
        SWGL.wrap(torch.optim.SGD([torch.zeros(3, requires_grad=True)], lr=0.1), **options)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("hostile", [1e30, 1e-30, 0.0, float("inf"), float("nan")])
def test_hostile_grads_keep_the_state_finite(impl, hostile):
    """Grads of every magnitude, zero and non-finite, before and after a shift (the two-object
    pattern; the base step is skipped on non-finite grads, as a GradScaler does): the weights
    and every state tensor stay finite, and a non-finite step leaves SWGL's state as it was."""
    g = torch.Generator().manual_seed(1)
    w = nn.Parameter(torch.randn(16, 8, generator=g))
    base = torch.optim.SGD([w], lr=1e-3)
    opt = SWGL([w], rule="v5", **IMPL_KW[impl])
    scales = [1.0] * 80 + [50.0] * 40                 # a shift at step 80
    for t, scale in enumerate(scales):
        grad = scale * torch.randn(16, 8, generator=g)
        if t % 7 == 3:
            grad[0, 0] = hostile                       # one hostile element now and then
        w.grad = grad
        before = {k: v.clone() for k, v in opt.state[w].items()}
        opt.step()
        finite = bool(torch.isfinite(grad).all())
        if finite:
            base.step()
        state = opt.state[w]
        if not finite:
            assert all(torch.equal(state[k], before[k]) for k in before)
        assert torch.isfinite(w).all()
        assert all(torch.isfinite(v).all() for v in state.values())
    if hostile != 1e30:   # (outliers capped at R_MAX every 7 steps swamp the detector: no claim)
        # the shift was still found; skipped steps do not count as the detector's steps
        applied = sum(1 for t in range(80) if t % 7 != 3 or math.isfinite(hostile))
        assert applied < float(state["detector"][3]) <= applied + 10


def test_a_loss_scale_is_transparent_to_the_detector_and_the_state():
    """Grads that still carry a loss scale S (grad_scale=S, as under a GradScaler) give the
    unscaled run's detector and state."""
    hp = Hyper(alpha=0.9, lambda_reg=3.0, eps=1e-8, max_boost=10.0, mode="update")
    runs = {}
    for scale in (1.0, 1024.0):
        p = [torch.zeros(6, 5)]
        state = {"stability": [torch.zeros(6, 5)], "consolidated": [torch.zeros(6, 5)],
                 "anchor": [torch.zeros(6, 5)], "detector": [torch.zeros(4)]}
        gen = torch.Generator().manual_seed(2)
        for t in range(120):
            grads = [(1.0 if t < 70 else 20.0) * torch.randn(6, 5, generator=gen) * scale]
            RULES["v5"].before.foreach(p, grads, state, [torch.ones(())], hp,
                                       Context(grad_scale=scale))
        runs[scale] = state
    assert float(runs[1.0]["detector"][0][3]) > 70       # the shift was found, in both
    for name in runs[1.0]:
        torch.testing.assert_close(runs[1024.0][name][0], runs[1.0][name][0], rtol=1e-5,
                                   atol=1e-6)


def test_an_unset_strength_resolves_to_the_rules_default():
    from swgl.options import DEFAULTS, check_options, hyper

    for rule, want in (("v5", cons.STRENGTH), ("v4", 0.0)):
        group = dict(DEFAULTS, rule=rule)
        check_options(group, math_only=True)
        assert hyper(group).consolidation == want


def test_grad_mode_is_rejected_for_v5():
    with pytest.raises(ValueError, match="mode"):
        SWGL([torch.zeros(3, requires_grad=True)], rule="v5", mode="grad")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: host syncs exist only "
                    "between a host and a device")
@pytest.mark.parametrize("horizon", [None, 20.0])
def test_v5_step_has_no_host_sync_on_cuda(horizon):
    opt = step_across_a_shift_without_host_sync("v5", consolidation_horizon=horizon)
    assert float(_detector(opt)[3]) > 0


def test_a_v5_checkpoint_loads_into_the_default_and_runs_as_v5():
    """v5 was the default until the twelfth session: its checkpoints name their rule, so a
    default-built SWGL resumes them as v5 (the same state as v5's after the next step)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 3)
    x = torch.randn(8, 6)
    saved = SWGL(model.parameters(), rule="v5")
    model(x).square().sum().backward()
    saved.step()
    resumed = SWGL(model.parameters())
    resumed.load_state_dict(saved.state_dict())
    assert resumed.param_groups[0]["rule"] == "v5"
    model(x).square().sum().backward()
    resumed.step()
    saved.step()
    got, want = resumed.state_dict()["state"][0], saved.state_dict()["state"][0]
    assert got.keys() == want.keys()          # v6 would hold a path
    for name, value in want.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0)
