"""The non-finite guard's flag (swgl.functional.found_nonfinite / all_finite): every inf and
NaN is seen, in every dtype, in any tensor of the list, and empty or 0-d tensors are fine."""

import pytest
import torch

from swgl.functional import all_finite, found_nonfinite

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [0, 1, 2])
def test_every_bad_value_is_seen(device, dtype, bad, where):
    grads = [torch.randn(37, 5, dtype=dtype, device=device), torch.randn((), dtype=dtype,
             device=device), torch.randn(4097, dtype=dtype, device=device),
             torch.zeros(0, dtype=dtype, device=device)]
    assert found_nonfinite(grads).tolist() == [0.0] and all_finite(grads)
    grads[where].view(-1)[-1] = bad
    flag = found_nonfinite(grads)
    assert flag.tolist() == [1.0] and flag.dtype == torch.float32 and flag.device == grads[0].device
    assert not all_finite(grads)


def test_only_empty_tensors_are_finite():
    empty = [torch.zeros(0), torch.zeros(3, 0)]
    assert found_nonfinite(empty).tolist() == [0.0] and all_finite(empty)
