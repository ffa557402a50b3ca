"""Issue 12's must-show: SWGL against the plain optimizer at its *tuned* learning rate on a
small permuted case, by margins taken from measurement.

Permuted Fashion-MNIST, 5 tasks (task 0 unpermuted) of 4000 samples, one pass, batch 64, MLP
784-256-256-10, SGD. Each method's lr is chosen on a validation split (training images 50k-60k,
never trained on) over three values around its optimum, and compared on the test split.

* ``v5`` (the default until the twelfth session), measured over 5 seeds on the 2-core VM
  (2026-11-30): tuned plain SGD 71.2 (lr 0.08; 0.04 and 0.16 give 69.6 and 71.1), v5 73.2 (lr
  0.16); +2.0, paired by seed +1.1 to +3.6. Asserted: +1.0 over 3 seeds, that gain less about
  one paired standard deviation.
* ``v6``, the default: its gain needs tasks long enough for its detector to find the shifts
  (+2.8 to +2.9 over tuned plain with SGD at 470 to 780 steps a task, docs/results.md). Here,
  at 62 steps a task, it finds none and is plain SGD: 71.5 (lr 0.16) against 71.1, +0.4 over
  5 seeds (twelfth session). Longer small cases measured +0.1 to +0.8 (4 to 8 tasks, 1 to 6
  epochs, 5 seeds, on the `nvidia-h200` machine's CPUs). **So the must-show's "beats by a
  margin" is missed at a size CI can run on Fashion-MNIST**; v6 is not run here (it would
  compare plain SGD on two lr grids), but on digits' longer tasks below.
With Adam neither beats the tuned lr at this size (v6: +0.0), so no margin is claimed for it.

On the embedded digits, tasks long enough for v6's detector fit CI
(:func:`test_default_beats_tuned_plain_on_digits`): permuted digits, 5 tasks of 100 steps
(``swgl bench``'s digits with 10 epochs per task), each method's lr tuned on validation over
three points (SGD 0.06 to 0.3, AdamW 3e-4 to 3e-3; SWGL's strength left at its default),
then 5 test seeds (the 2-core VM, 2026-12-01): v6 +1.9 ± 0.5 over tuned SGD (paired by seed:
+1.2 to +2.5; seeds 0 to 2: +2.0) and +1.5 ± 0.7 over tuned AdamW (+0.4 to +2.4; seeds 0 to 2:
+1.2). Re-measured on 2026-12-02, after the harness stopped ending each pass with its
incomplete last batch: +2.2 ± 0.7 (+1.0 to +2.8; seeds 0 to 2: +1.9) and +1.4 ± 0.6 (+0.8 to
+2.3; seeds 0 to 2: +1.3). Asserted over seeds 0 to 2: +1.0 (SGD) and +0.5 (AdamW), the gain
less about one and a half paired standard deviations.
"""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from swgl import SWGL

TASKS, TRAIN, EVAL, BATCH, HIDDEN = 5, 4000, 1000, 64, 256
SEEDS = (0, 1, 2)
#: per rule: the margin over tuned plain SGD asserted, and SWGL's lr grid
MARGINS = {"v5": (1.0, (0.08, 0.16, 0.32))}


def _tasks(data, seed: int):
    """Per task: (train, val, test) pairs of inputs and labels, the task's permutation applied."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for t in range(TASKS):
        perm = torch.arange(784) if t == 0 else torch.randperm(784, generator=g)
        train = torch.randperm(50000, generator=g)[:TRAIN]
        val = 50000 + torch.randperm(10000, generator=g)[:EVAL]
        test = torch.randperm(len(data.y_test), generator=g)[:EVAL]
        out.append([(xs[i].flatten(1)[:, perm], ys[i]) for xs, ys, i in
                    ((data.x_train, data.y_train, train), (data.x_train, data.y_train, val),
                     (data.x_test, data.y_test, test))])
    return out


def _val_and_test_acc(data, lr: float, rule: str | None, seed: int) -> tuple[float, float]:
    """Mean accuracy over every task after the last one, on the val and the test split."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(784, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                          nn.Linear(HIDDEN, 10))
    base = torch.optim.SGD(model.parameters(), lr=lr)
    opt = base if rule is None else SWGL.wrap(base, rule=rule)   # its defaults
    order = torch.Generator().manual_seed(seed)
    tasks = _tasks(data, seed)
    for (x, y), _, _ in tasks:
        idx = torch.randperm(len(y), generator=order)
        for i in range(0, len(y) - BATCH + 1, BATCH):
            b = idx[i:i + BATCH]
            opt.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            opt.step()
    with torch.no_grad():
        return tuple(100 * np.mean([float((model(x).argmax(1) == y).float().mean())
                                    for x, y in (task[split] for task in tasks)])
                     for split in (1, 2))


def _tuned_test_acc(data, lrs, rule: str | None) -> float:
    """Test accuracy (mean over seeds) at the lr with the best mean validation accuracy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)      # the measured numerics
    try:
        runs = {lr: np.array([_val_and_test_acc(data, lr, rule, s) for s in SEEDS]) for lr in lrs}
    finally:
        torch.set_num_threads(threads)
    best = max(lrs, key=lambda lr: runs[lr][:, 0].mean())
    return float(runs[best][:, 1].mean())


@pytest.fixture(scope="module")
def tuned_plain(fashion_mnist) -> float:
    return _tuned_test_acc(fashion_mnist, (0.04, 0.08, 0.16), rule=None)


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["v5"])
def test_swgl_against_tuned_sgd_on_permuted_tasks(fashion_mnist, tuned_plain, rule):
    margin, lrs = MARGINS[rule]
    swgl = _tuned_test_acc(fashion_mnist, lrs, rule=rule)
    assert swgl >= tuned_plain + margin, (tuned_plain, swgl)


#: the margin over the tuned plain optimizer asserted on digits' 100-step tasks, per method:
#: the default (v6) and the opt-in rule v7 (measured +5.6 ± 1.9 / +6.6 ± 1.9 over 5 seeds,
#: +5.5 / +5.8 over seeds 0 to 2: asserted +3.0, the gain less about one and a half paired
#: standard deviations; docs/results.md, eighteenth session)
DIGITS_MARGINS = {"swgl-sgd": 1.0, "swgl-adamw": 0.5, "v7-sgd": 3.0, "v7-adamw": 3.0}


@pytest.mark.slow
def test_default_beats_tuned_plain_on_digits(tmp_path):
    """The library's default (v6, every option at its default) and the rule v7 against the
    plain optimizer, each at its lr tuned on validation, by ``swgl bench``'s protocol
    (``swgl.bench.tuning``); the numbers are the module docstring's and DIGITS_MARGINS'."""
    from swgl.bench.config import BenchConfig
    from swgl.bench.tuning import TuneOptions, tune

    swgl = tuple(DIGITS_MARGINS)
    cfg = BenchConfig(scenarios=("permuted",), methods=("naive-sgd", "naive-adamw", *swgl),
                      epochs=10, variants={f"v7-{opt}": {"base": f"swgl-{opt}", "swgl.rule": "v7"}
                                           for opt in ("sgd", "adamw")})
    opts = TuneOptions(lr_points=3, seeds=(0,), final_seeds=SEEDS,
                       lr_ranges={"sgd": (0.06, 0.3), "adamw": (3e-4, 3e-3)},
                       strength={name: {} for name in swgl})
    rows = tune(cfg, opts, out_dir=tmp_path, plots=False).rows   # each cell on 1 thread
    for name, margin in DIGITS_MARGINS.items():
        (row,) = [r for r in rows if r["method"] == name]
        assert row["baseline"] == "naive-" + name.split("-")[1]
        assert 100 * row["delta_mean"] >= margin, (name, row["delta_mean"])
