"""benchmarks/si_detect_pilot.py: SI at the shifts of v5's detector (issue 12, a pilot)."""

import torch
import torch.nn as nn

import swgl
from benchmark_scripts import load
from swgl.bench.methods import Context

P = load("si_detect_pilot")


def _library_shifts(norms: list[float]) -> list[int]:
    """The steps at which rule v5's own detector (``swgl.functional``) fires, for grads whose
    squared norms are ``norms``."""
    w = torch.zeros(4)
    extra = {"consolidated": [torch.zeros(4)], "anchor": [torch.zeros(4)],
             "detector": [torch.zeros(4)]}
    stab, step, shifts = [torch.zeros(4)], [torch.zeros(())], []
    for t, n in enumerate(norms, 1):
        g = torch.full((4,), (n / 4) ** 0.5)
        last = float(extra["detector"][0][3])
        swgl.functional.swgl([w], [g], stab, step, rule="v5", alpha=0.999, lambda_reg=3.0,
                             eps=1e-8, max_boost=10.0, mode="update", foreach=False,
                             extra_state=extra)
        if float(extra["detector"][0][3]) != last:
            shifts.append(t)
    return shifts


def test_the_pilots_detector_fires_where_the_rules_does():
    g = torch.Generator().manual_seed(0)
    # three "tasks": the loss (and the grad norm) jumps at each start and decays within it
    norms = [float(1.0 + 0.3 * torch.rand((), generator=g)) * (1.0 + 20.0 * 0.97 ** (t % 150))
             for t in range(450)]
    det = P.Detector()
    mine = [t for t, n in enumerate(norms, 1) if det.update(n)]
    assert mine == _library_shifts(norms)
    assert len(mine) >= 2          # the jumps at steps 151 and 301 are found


def _si(implicit: float, c: float = 10.0):
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return P.SIDetect(model, opt, Context(n_outputs=2, batch_size=8),
                      {"c": c, "xi": 0.1, "implicit": implicit}), model


def test_si_consolidates_at_a_detected_shift_without_a_boundary():
    si, model = _si(0.0)
    start = model.weight.detach().clone()
    x, tids = torch.randn(8, 3), torch.zeros(8, dtype=torch.long)
    for t in range(200):
        y = torch.zeros(8, dtype=torch.long) if t < 100 else torch.ones(8, dtype=torch.long)
        si.observe(x, y, tids)
    assert si.shifts and 100 < si.shifts[0] <= 110      # the label flip, found within 10 steps
    assert all(bool(o.abs().sum() > 0) for o in si.omega.values())
    assert not torch.equal(si.anchor["weight"], start)    # the anchor moved to the shift


def test_the_implicit_form_divides_the_gradient_by_one_plus_lr_2c_omega():
    si, model = _si(1.0, c=10.0)
    for o in si.omega.values():
        o.fill_(0.5)
    x, y = torch.randn(8, 3), torch.zeros(8, dtype=torch.long)
    model.zero_grad()
    (si.task_loss(x, y, torch.zeros(8, dtype=torch.long)) + si.penalty()).backward()
    raw = model.weight.grad.clone()
    si.before_step()
    torch.testing.assert_close(model.weight.grad, raw / (1.0 + 0.1 * 2.0 * 10.0 * 0.5))


def test_the_grid_runs_known_methods_and_the_report_names_the_best_lr():
    runs = P.grid()
    assert len(runs) == 414
    assert {r["method"] for r in runs} == {"si-detect", "si-boundaries"}
    cfg = dict(runs[0], lr=1e-4)
    res = [{"cfg": dict(cfg, seed=s, lr=lr), "val": [[v]], "test": [[v]]}
           for s in (0, 1) for lr, v in ((1e-4, 0.70), (2e-4, 0.74))]
    tuned = [{"scenario": "short", "optimizer": "adam", "label": lab, "acc_mean": 71.0}
             for lab in ("plain", "swgl")]
    table = P.report(res, tuned)
    assert "| short | adam | si-detect | 1 | 0.0002 (edge) | 74.0 ± 0.0 (n=2) | +3.0 | +0.0 |" \
        in table
