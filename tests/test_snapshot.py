"""base.snapshot: the copies the update mode's after phase reads (views of one flat buffer
per param group, kept between steps on the CPU)."""

import torch

from swgl import SWGL
from swgl.base import Pending
from swgl.base import snapshot as _snapshot


@torch.no_grad()  # as in the classes' step
def snapshot(entry, kept):
    return _snapshot(entry, kept)


def _entry(params):
    opt = SWGL(params)
    return Pending(opt.param_groups[0], list(params), [None] * len(params))


def test_copies_are_exact_unaliased_and_kept_on_the_cpu():
    params = [torch.nn.Parameter(torch.randn(3, 4)), torch.nn.Parameter(torch.randn(5))]
    with torch.no_grad():
        params[0][0, 0], params[0][0, 1], params[1][2] = -0.0, float("nan"), float("inf")
    entry, kept = _entry(params), {}
    first = snapshot(entry, kept)
    for c, p in zip(first, params):
        assert c.shape == p.shape and c.dtype == p.dtype
        assert c.untyped_storage().data_ptr() != p.untyped_storage().data_ptr()
        assert torch.equal(c.view(torch.int32), p.detach().view(torch.int32))  # bit for bit
    with torch.no_grad():
        params[1].add_(1.0)
    second = snapshot(entry, kept)
    assert [c.data_ptr() for c in second] == [c.data_ptr() for c in first]
    assert torch.equal(second[1], params[1].detach())
    # one flat buffer: the copies are back to back
    assert second[1].data_ptr() == second[0].data_ptr() + 12 * 4


def test_mixed_dtypes_and_other_params_get_fresh_copies():
    params = [torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(4).double())]
    entry = _entry(params)
    out = snapshot(entry, {})
    assert [c.dtype for c in out] == [torch.float32, torch.float64]
    assert all(torch.equal(c, p.detach()) for c, p in zip(out, params))
    # the group's params changed: a new layout, not the old buffer
    group = entry.group
    kept = {}
    first = snapshot(Pending(group, [params[0]], [None]), kept)
    grown = [params[0], torch.nn.Parameter(torch.randn(7))]
    out = snapshot(Pending(group, grown, [None, None]), kept)
    assert [c.shape for c in out] == [torch.Size([4]), torch.Size([7])]
    assert torch.equal(out[1], grown[1].detach()) and out[0] is not first[0]
