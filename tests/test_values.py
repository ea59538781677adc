"""Argument envelopes: a tensor's envelope is shared with the tensors alike in everything it says, never others."""

from __future__ import annotations

import orjson
import torch

from traincheck_rewrite.runtime.values import encoded, encoded_return, envelope, number


def _expected(t: torch.Tensor) -> dict:
    return {("torch.nn.Parameter" if isinstance(t, torch.nn.Parameter) else t.type()): {
        "dtype": str(t.dtype), "shape": list(t.shape), "device": str(t.device), "requires_grad": t.requires_grad,
        "is_leaf": t.is_leaf, "ndim": t.ndim, "numel": t.numel(), "itemsize": t.element_size(),
        "nbytes": t.numel() * t.element_size(), "is_cpu": t.is_cpu,
    }}  # fmt: skip


def _payloads(envelopes: list[dict]) -> list[dict]:
    return [{k: v for k, v in e.items() if k != "data_id"} for e in envelopes]


def test_each_tensor_envelope_says_what_that_tensor_is():
    leaf = torch.ones(2, 3, requires_grad=True)
    tensors = [torch.ones(2, 3), leaf, leaf * 2, torch.ones(3, 2), torch.ones(2, 3, dtype=torch.float64), torch.ones(0),
               torch.ones(2, 3, dtype=torch.int64), torch.zeros(()), torch.nn.Parameter(torch.ones(2, 3))]  # fmt: skip
    for _ in range(2):  # the second time from the shared envelopes
        assert _payloads([envelope(t) for t in tensors]) == [_expected(t) for t in tensors]
    x = torch.ones(2, 3)
    before = envelope(x)
    x.requires_grad_()
    assert _payloads([envelope(x)]) == [_expected(x)] and envelope(x)[x.type()]["requires_grad"] and not before[x.type()]["requires_grad"]


def test_a_tensor_keeps_its_data_id_and_two_tensors_alike_have_two():
    a, b = torch.zeros(4), torch.zeros(4)
    assert envelope(a)[a.type()] is envelope(b)[b.type()]  # the shared payload
    first = envelope(a)["data_id"]
    assert envelope(b)["data_id"] != first
    assert envelope(a.data)["data_id"] == envelope(a[1:])["data_id"] == envelope(a)["data_id"] == first  # one storage
    param = torch.nn.Parameter(a)
    assert envelope(param)["data_id"] == first
    del a, param
    c = torch.zeros(4)  # may reuse the freed address: still a new id
    assert envelope(c)["data_id"] > envelope(b)["data_id"] > first
    sparse = torch.zeros(2, 2).to_sparse()
    assert "data_id" not in envelope(sparse) and len(envelope(sparse)) == 1


def test_each_tensor_envelope_as_json_says_what_that_tensor_is():
    leaf = torch.ones(2, 3, requires_grad=True)
    tensors = [torch.ones(2, 3), leaf, leaf * 2, torch.ones(3, 2), torch.ones(2, 3, dtype=torch.float64), torch.ones(0),
               torch.ones(2, 3, dtype=torch.int64), torch.zeros(()), torch.ones(2, 3).to_sparse()]  # fmt: skip
    for _ in range(2):  # the second time from the shared envelopes
        assert [orjson.loads(encoded(t)) for t in tensors] == [envelope(t) for t in tensors]
    assert orjson.loads(encoded_return((leaf, 3, None))) == [envelope(leaf), {"int": 3}, {"NoneType": None}]


def test_an_unrecorded_call_numbers_its_tensors_as_a_recorded_one_would():
    """values.number: a selective run's data ids are those of the full run its invariants were learnt from."""
    a, b, c = torch.ones(2), torch.ones(3), torch.ones(4)
    number([a, (b, {"k": c}), 7])
    number(a)  # seen again: the same id
    ids = [envelope(t)["data_id"] for t in (a, b, c)]
    assert ids == list(range(ids[0], ids[0] + 3))
    assert envelope(torch.ones(5))["data_id"] == ids[2] + 1
