"""Tensors torch itself will not read like a dense one, on real runs: a tracked model holding one buffer of every
kind (quantized, meta, sparse, nested, jagged, mkldnn) trains and keeps every record in every format; a tensor whose
attributes torch refuses to read (a no_grad view's `is_leaf`, a nested tensor's shape) is recorded with what can be
read, in C and in Python alike, and its call stays recorded."""

from __future__ import annotations

import sys
import warnings

import orjson
import pytest
import torch

from helpers import FIXTURES, run_plain, run_tc
from traincheck_rewrite.runtime import _speedups, tensors, values
from traincheck_rewrite.runtime.tensors import tensor_hash
from traincheck_rewrite.trace import read_records

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # torch's beta and deprecation notices for these kinds

KINDS = {  # buffer -> the layout its records say
    "quantized": "torch.strided",
    "quantized_per_channel": "torch.strided",
    "meta": "torch.strided",
    "coo": "torch.sparse_coo",
    "csr": "torch.sparse_csr",
    "csc": "torch.sparse_csc",
    "bsr": "torch.sparse_bsr",
    "bsc": "torch.sparse_bsc",
    "nested": "torch.strided",
    "jagged": "torch.jagged",
    "mkldnn": "torch._mkldnn",
}
WARNED = ["quantized", "meta", "sparse_coo", "sparse_csr", "sparse_csc", "sparse_bsr", "sparse_bsc", "nested", "jagged",
          "_mkldnn"]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    fixture = FIXTURES / "hostile_tensors"
    plain = run_plain([sys.executable, "train.py"], cwd=fixture)
    runs = {}
    for fmt in ("hash", "stats", "full"):
        traced = run_tc([str(fixture / "config.yaml"), "--tensor-dump-format", fmt], tmp_path_factory.mktemp(fmt))
        runs[fmt] = (traced, sorted(read_records(traced.run_dir), key=lambda r: r["time"]) if traced.run_dir else [])
    return plain, runs


def _dense():
    return torch.arange(16, dtype=torch.float32).reshape(4, 4) - 8


@pytest.mark.parametrize("fmt", ["hash", "stats", "full"])
def test_a_model_holding_every_kind_of_tensor_trains_as_without_the_tool(hostile, fmt):
    plain, runs = hostile
    traced, _ = runs[fmt]
    assert plain.returncode == 0 and traced.returncode == 0, traced.stderr  # was a segfault under hash
    assert traced.stdout == plain.stdout
    assert "recorder error" not in traced.stderr


@pytest.mark.parametrize("fmt", ["hash", "stats", "full"])
def test_every_tensor_of_every_kind_is_recorded_by_what_can_be_said_of_it(hostile, fmt):
    _, runs = hostile
    records = runs[fmt][1]
    init = {r["var_name"]: r["attributes"] for r in records if r["type"] == "state_change" and r["mode"] == "init"}
    assert set(init) == {"model.fc.weight", "model.fc.bias", "model.steps", *(f"model.{k}" for k in KINDS)}
    for name, layout in KINDS.items():
        attrs = init[f"model.{name}"]
        assert attrs["layout"] == layout and attrs["dtype"].startswith("torch."), name
        if name == "meta":
            assert attrs["data"] is None and attrs["shape"] == [4, 4] and attrs["device"] == "meta"
        else:
            assert attrs["data"] is not None, name
    assert "layout" not in init["model.fc.weight"]  # an ordinary tensor's record is as before
    assert init["model.nested"]["shape"] is None and init["model.nested"]["numel"] == 5  # torch refuses its shape
    assert init["model.jagged"]["shape"] == [2, None, 4]  # a symbolic dimension is null
    quantized = torch.quantize_per_tensor(_dense(), 0.5, 8, torch.quint8).dequantize()
    if fmt == "hash":
        assert init["model.quantized"]["data"] == tensor_hash(quantized)
        assert init["model.coo"]["data"] == init["model.csr"]["data"] == init["model.csc"]["data"]  # the same entries
    elif fmt == "stats":
        expected = {"min": -8.0, "max": 7.0, "mean": -0.5, "std": pytest.approx(4.7609523), "shape": [4, 4]}
        assert init["model.coo"]["data"] == init["model.mkldnn"]["data"] == expected
    else:
        assert init["model.quantized"]["data"] == quantized.reshape(-1).tolist()
        assert init["model.bsr"]["data"] == _dense().reshape(-1).tolist()


@pytest.mark.parametrize("fmt", ["hash", "stats", "full"])
def test_the_other_tensors_keep_all_their_records(hostile, fmt):
    _, runs = hostile
    records = runs[fmt][1]
    steps = [r for r in records if r.get("function") == "torch.optim.sgd.SGD.step"]
    pre = {r["func_call_id"]: r["time"] for r in steps if r["type"].endswith("(pre)")}
    windows = [(pre[r["func_call_id"]], r["time"]) for r in steps if r["type"].endswith("(post)")]
    assert len(windows) == 3
    weight = [r for r in records if r["type"] == "state_change" and r["var_name"] == "model.fc.weight"]
    for start, end in windows:
        assert any(start < r["time"] < end for r in weight), (fmt, start)
    if fmt == "hash":  # a buffer changed by the forward is compared by content: one record per forward
        steps = [r for r in records if r["type"] == "state_change" and r["var_name"] == "model.steps"]
        assert len(steps) == 4


@pytest.mark.parametrize("fmt", ["hash", "stats", "full"])
def test_each_kind_is_told_once(hostile, fmt):
    _, runs = hostile
    lines = [line for line in runs[fmt][0].stderr.splitlines() if "traincheck_rewrite: warning" in line]
    for kind in WARNED:
        assert sum(line.split("warning: ", 1)[1].startswith(f"{kind} tensors") for line in lines) == 1, (kind, lines)
    assert len(lines) == len(WARNED)


def _refusing():
    """Tensors torch refuses an attribute of, and one of each unusual kind."""
    warnings.filterwarnings("ignore", category=UserWarning)
    weight = torch.nn.Parameter(torch.zeros(3, 2))
    with torch.no_grad():
        view = weight[0]
        view.fill_(1)  # from now on torch refuses `view.is_leaf`
    with pytest.raises(RuntimeError):
        view.is_leaf
    dense = _dense()
    return [
        view,
        torch.nested.nested_tensor([torch.ones(2), torch.ones(3)]),  # refuses its shape
        torch.nested.nested_tensor([torch.ones(2, 4), torch.ones(3, 4)], layout=torch.jagged),  # a symbolic dimension
        torch.quantize_per_tensor(dense, 0.5, 8, torch.quint8),
        torch.empty(2, device="meta"),
        dense.to_sparse_csr(),
        dense.to_mkldnn(),
    ]


def test_a_tensor_torch_refuses_to_read_has_the_same_text_in_c_and_python():
    for t in _refusing():
        for _ in range(2):  # the second time from what the first may have cached
            text = _speedups.tensor_text(t)
            assert text == values._tensor_text_in_python(t)
            assert orjson.loads(text) == orjson.loads(orjson.dumps(values.envelope(t))), text
    view_text = orjson.loads(_speedups.tensor_text(_refusing()[0]))
    assert view_text["torch.FloatTensor"]["is_leaf"] is None and view_text["torch.FloatTensor"]["shape"] == [2]
    assert orjson.loads(_speedups.tensor_text(_refusing()[1]))["torch.FloatTensor"]["shape"] is None


def test_a_call_on_a_tensor_torch_refuses_to_read_stays_recorded(tmp_path):
    fixture = FIXTURES / "no_grad_view"
    plain = run_plain([sys.executable, "train.py"], cwd=fixture)
    traced = run_tc([str(fixture / "config.yaml")], tmp_path)
    assert traced.returncode == 0 == plain.returncode and traced.stdout == plain.stdout
    assert traced.program_stderr == plain.stderr == ""  # was: a recorder error warning
    records = list(read_records(traced.run_dir))
    fills = [r for r in records if r.get("function") == "torch.Tensor.fill_"]
    assert [r["type"] for r in fills] == ["function_call (pre)", "function_call (post)"]
    assert fills[1]["return_values"]["torch.FloatTensor"]["is_leaf"] is None  # the one attribute torch refused
    assert fills[1]["return_values"]["torch.FloatTensor"]["shape"] == [4]
    nested = [r for r in records if r.get("function") == "torch.nested.nested_tensor"]
    assert [r["type"] for r in nested] == ["function_call (pre)", "function_call (post)"]
    assert nested[1]["return_values"]["torch.FloatTensor"]["shape"] is None


class _Refusing(torch.Tensor):
    """A tensor subclass whose arithmetic fails, as a library's own tensor type may."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in ("mul", "__mul__", "to", "copy_", "_foreach_copy_", "stack"):
            raise RuntimeError("refused")
        return super().__torch_function__(func, types, args, kwargs or {})


def test_a_tensor_that_cannot_be_hashed_leaves_the_others_of_its_batch_hashed():
    plain = [torch.randn(4, 4), torch.randn(3), torch.randn(4, 4), torch.randn(70_000)]  # batched, and one alone
    items = [*plain, torch.randn(4, 4).as_subclass(_Refusing), *_refusing()[1:]]
    got = tensors.hashes(items)
    assert got[:4] == [tensor_hash(t) for t in plain] and all(isinstance(h, int) for h in got[:4])
    assert got[4] is None  # its warning says why
    assert got[5:] == [tensor_hash(t) for t in items[5:]]
    assert [h is None for h in got[5:]] == [False, False, False, True, False, False]  # only the meta tensor: none
