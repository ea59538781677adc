"""Argument envelopes: a tensor's envelope is shared with the tensors alike in everything it says, never others."""

from __future__ import annotations

import orjson
import torch

from traincheck_rewrite.runtime.values import encoded, encoded_return, envelope


def _expected(t: torch.Tensor) -> dict:
    return {t.type(): {
        "dtype": str(t.dtype), "shape": list(t.shape), "device": str(t.device), "requires_grad": t.requires_grad,
        "is_leaf": t.is_leaf, "ndim": t.ndim, "numel": t.numel(), "itemsize": t.element_size(),
        "nbytes": t.numel() * t.element_size(), "is_cpu": t.is_cpu,
    }}  # fmt: skip


def test_each_tensor_envelope_says_what_that_tensor_is():
    leaf = torch.ones(2, 3, requires_grad=True)
    tensors = [torch.ones(2, 3), leaf, leaf * 2, torch.ones(3, 2), torch.ones(2, 3, dtype=torch.float64), torch.ones(0),
               torch.ones(2, 3, dtype=torch.int64), torch.zeros(())]  # fmt: skip
    for _ in range(2):  # the second time from the shared envelopes
        assert [envelope(t) for t in tensors] == [_expected(t) for t in tensors]
    x = torch.ones(2, 3)
    before = envelope(x)
    x.requires_grad_()
    assert envelope(x) == _expected(x) and envelope(x)[x.type()]["requires_grad"] and not before[x.type()]["requires_grad"]


def test_each_tensor_envelope_as_json_says_what_that_tensor_is():
    leaf = torch.ones(2, 3, requires_grad=True)
    tensors = [torch.ones(2, 3), leaf, leaf * 2, torch.ones(3, 2), torch.ones(2, 3, dtype=torch.float64), torch.ones(0),
               torch.ones(2, 3, dtype=torch.int64), torch.zeros(()), torch.ones(2, 3).to_sparse()]  # fmt: skip
    for _ in range(2):  # the second time from the shared envelopes
        assert [orjson.loads(encoded(t)) for t in tensors] == [envelope(t) for t in tensors]
    assert orjson.loads(encoded_return((leaf, 3, None))) == [envelope(leaf), {"int": 3}, {"NoneType": None}]
