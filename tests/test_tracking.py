"""Model tracking on real runs: every tensor at tracking time, every change inside the call that made it, frozen
parameters unchanged, the program's objects untouched; and the tensor hash itself."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from helpers import FIXTURES, run_plain, run_tc
from traincheck_rewrite.runtime import tensors
from traincheck_rewrite.runtime.tensors import tensor_hash, tensor_stats
from traincheck_rewrite.runtime.tracking import Tracker
from traincheck_rewrite.trace import read_records

PARAMS = ["model.0.bias", "model.1.weight", "model.1.bias", "model.3.weight", "model.3.bias"]
BUFFERS = ["model.1.running_mean", "model.1.running_var", "model.1.num_batches_tracked"]


@pytest.fixture(scope="module")
def styles(tmp_path_factory):
    fixture = FIXTURES / "tracking"
    plain = run_plain([sys.executable, "train.py"], cwd=fixture)
    out = {}
    for style in ("proxy", "subclass", "sampler"):
        traced = run_tc([str(fixture / "config.yaml"), "--model-tracker-style", style], tmp_path_factory.mktemp(style), cwd=fixture)
        out[style] = (plain, traced, sorted(read_records(traced.run_dir), key=lambda r: (r["thread_id"], r["time"])))
    return out


def _windows(records, function, programs_only=False):
    """(pre time, post time) of each call of `function` (`programs_only`: made by the program, not inside torch)."""
    pre = {r["func_call_id"]: r["time"] for r in records if r.get("function") == function and r["type"].endswith("(pre)")
           and not (programs_only and isinstance(r["site"], str))}  # fmt: skip
    return [(pre[r["func_call_id"]], r["time"]) for r in records if r.get("function") == function and "(post)" in r["type"]
            and r["func_call_id"] in pre]


def _states(records, var, inside=None):
    out = [r for r in records if r["type"] == "state_change" and r["var_name"] == var]
    if inside is not None:
        out = [r for r in out if inside[0] < r["time"] < inside[1]]
    return out


@pytest.mark.parametrize("style", ["proxy", "subclass", "sampler"])
def test_program_behaves_the_same_under_tracking(styles, style):
    plain, traced, _ = styles[style]
    assert traced.returncode == 0 == plain.returncode, traced.stderr
    assert traced.stdout == plain.stdout


@pytest.mark.parametrize("style", ["proxy", "subclass", "sampler"])
def test_every_tensor_is_recorded_when_tracking_starts(styles, style):
    records = styles[style][2]
    init = {r["var_name"]: r for r in records if r["type"] == "state_change" and r["mode"] == "init"}
    assert set(init) == {"model.0.weight", *PARAMS, *BUFFERS}
    assert init["model.0.weight"]["var_type"] == "torch.nn.Parameter"
    assert init["model.1.running_mean"]["var_type"] == "torch.Tensor"
    attrs = init["model.3.weight"]["attributes"]
    assert isinstance(attrs["data"], int) and attrs["grad"] is None and attrs["shape"] == [3, 8]
    assert set(attrs) >= {"dtype", "shape", "requires_grad", "is_leaf", "data", "grad"}


@pytest.mark.parametrize("style", ["proxy", "subclass", "sampler"])
def test_each_optimizer_step_changes_trained_data_inside_its_window(styles, style):
    records = styles[style][2]
    steps = _windows(records, "torch.optim.sgd.SGD.step")
    assert len(steps) == 5
    for var in PARAMS[1:]:  # model.0.bias feeds BatchNorm, which cancels its gradient: zero, so it does not move
        last = _states(records, var)[0]["attributes"]["data"]
        for window in steps:
            inside = _states(records, var, window)
            assert inside, f"{var}: no record inside step {window}"
            assert inside[-1]["attributes"]["data"] != last
            last = inside[-1]["attributes"]["data"]


@pytest.mark.parametrize("style", ["proxy", "subclass", "sampler"])
def test_frozen_parameter_never_changes(styles, style):
    records = styles[style][2]
    hashes = {r["attributes"]["data"] for r in _states(records, "model.0.weight")}
    assert len(hashes) == 1


@pytest.mark.parametrize("style", ["proxy", "subclass"])
def test_freezing_a_parameter_is_recorded_inside_the_requires_grad_call(styles, style):
    """requires_grad_() bumps no version counter; a frozen stage unfrozen again (mmpretrain-702) must show at its call."""
    records = styles[style][2]
    freeze = _windows(records, "torch.Tensor.requires_grad_")
    assert len(freeze) == 1
    assert [r["attributes"]["requires_grad"] for r in _states(records, "model.0.weight", freeze[0])] == [False]


@pytest.mark.parametrize("style", ["proxy", "subclass"])
def test_zero_grad_clears_grads_inside_its_window_and_backward_sets_them(styles, style):
    records = styles[style][2]
    zero = _windows(records, "torch.optim.optimizer.Optimizer.zero_grad")
    backward = _windows(records, "torch._tensor.Tensor.backward")
    assert len(zero) == len(backward) == 5
    for var in PARAMS:
        for window in zero[1:]:  # the first zero_grad finds no grads to clear
            inside = _states(records, var, window)
            assert inside and inside[-1]["attributes"]["grad"] is None
        for window in backward:
            inside = _states(records, var, window)
            assert inside and isinstance(inside[-1]["attributes"]["grad"], int)
    # BatchNorm statistics change in the model's forward, recorded inside the tracked model's call
    forward = _windows(records, "torch.nn.modules.container.Sequential.forward")
    assert any(_states(records, "model.1.running_mean", w) for w in forward)


def test_proxy_obj_names_name_the_tracked_objects_passed(styles):
    records = styles["proxy"][2]
    calls = [r for r in records if r["type"] == "function_call (pre)"]
    assert all("proxy_obj_names" in r for r in calls)
    forward = next(r for r in calls if r["function"] == "torch.nn.modules.container.Sequential.forward" and r["proxy_obj_names"])
    assert forward["proxy_obj_names"] == [["model", "Sequential"]]


def test_a_misspelt_model_name_warns_with_candidates(tmp_path: Path):
    fixture = FIXTURES / "tracking"
    traced = run_tc([str(fixture / "config.yaml"), "--models-to-track", "modle"], tmp_path, cwd=fixture)
    assert traced.returncode == 0
    warning = [line for line in traced.stderr.splitlines() if "models_to_track" in line]
    assert len(warning) == 1 and "'modle'" in warning[0] and "model (train.py:13)" in warning[0]
    assert not any(r["type"] == "state_change" for r in read_records(traced.run_dir))


# --- the hash ---------------------------------------------------------------------------------------------------

FLOAT_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_one_ulp_in_any_element_changes_the_hash(dtype):
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        t = torch.randn(7, 5, generator=g).to(dtype)
        i = int(torch.randint(0, t.numel(), (1,), generator=g))
        nudged = t.clone().reshape(-1)
        nudged[i] = torch.nextafter(nudged[i : i + 1].float(), torch.tensor([float("inf")])).to(dtype)[0]
        if torch.equal(nudged.reshape(t.shape), t):  # the nudge rounded away in a short dtype: nudge the bits
            nudged.view(torch.int16 if t.element_size() == 2 else torch.int32)[i] += 1
        assert tensor_hash(nudged.reshape(t.shape)) != tensor_hash(t), (dtype, trial, i)


def test_nan_inf_and_minus_inf_are_distinct_and_other_dtypes_hash():
    values = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0]
    hashes = {tensor_hash(torch.tensor([1.0, v])) for v in values}
    assert len(hashes) == len(values)
    for t in (torch.arange(10), torch.ones(3, dtype=torch.bool), torch.randn(4, dtype=torch.complex64),
              torch.ones(2, 3).t(), torch.empty(0)):
        assert isinstance(tensor_hash(t), int)
    assert tensor_hash(torch.ones(2, 3).t()) == tensor_hash(torch.ones(3, 2))  # layout does not matter, values do


def test_contiguous_and_strided_tensors_of_the_same_values_hash_alike():
    g = torch.Generator().manual_seed(1)
    for dtype in (torch.float32, torch.float64, torch.int64, torch.float16):
        t = torch.randn(6, 4, generator=g).to(dtype)
        strided = t.t().contiguous().t()  # the same values, column-major: hashed through the general path
        assert not strided.is_contiguous() and tensor_hash(strided) == tensor_hash(t), dtype


def _by_tensor_operations(t) -> int:
    return int(tensors._hash_tensor(t).item())


@pytest.mark.parametrize("in_place", [True, False], ids=["host memory read in place", "tensor operations"])
def test_a_batch_hashes_each_tensor_as_it_hashes_alone(monkeypatch, in_place: bool):
    """Tracking hashes the tensors of a check together (`hashes`): each must get exactly `tensor_hash`'s value, in
    every dtype, layout and size, whether read in place by the C speedups (host memory), batched, cut into several
    batches or hashed alone, and again after a change (the batch's buffers are reused); and that value is the one
    of the tensor operations (`_hash_tensor`, which hashes tensors on any device)."""
    if not in_place:
        monkeypatch.setattr(tensors, "_speedups", None)
    elif tensors._speedups is None:
        pytest.skip("the C speedups are not built")
    g = torch.Generator().manual_seed(2)
    items = [torch.randn(64, 64, generator=g), torch.randn(3, generator=g), torch.randn(64, 64, generator=g).t(),
             torch.randn(5, generator=g, dtype=torch.float64), torch.arange(7), torch.arange(9, dtype=torch.int32),
             torch.empty(0), torch.ones(4, dtype=torch.bool), torch.randn(10, generator=g).half(),
             torch.tensor([float("nan"), float("inf"), float("-inf"), 0.0, -0.0]), torch.randn(70_000, generator=g),
             torch.randn(63, generator=g), torch.randn(64, generator=g), torch.randn(65, generator=g), torch.tensor(3.0),
             torch.randn(2, 3, 4, generator=g)[:, 1], torch.randn(3, generator=g, dtype=torch.complex64),
             torch.randn(8, 8, generator=g)[2:5], torch.randint(-2**40, 2**40, (33,), generator=g),
             torch._neg_view(torch.randn(6, generator=g))]  # fmt: skip
    expected = [tensor_hash(t) for t in items]
    assert tensors.hashes(items) == expected
    assert [h for h, t in zip(expected, items) if not t.is_complex() and t.dtype != torch.bool] == [
        _by_tensor_operations(t) for t in items if not t.is_complex() and t.dtype != torch.bool]
    items[0].add_(1)
    items[12][5] = float("nan")
    assert tensors.hashes(items) == [tensor_hash(t) for t in items]
    assert tensors.hashes(items)[0] == _by_tensor_operations(items[0])
    monkeypatch.setattr(tensors, "GROUP_MAX_WORDS", 100)  # several batches of one dtype
    assert tensors.hashes(items) == [tensor_hash(t) for t in items]


def test_threads_hashing_tensors_of_the_same_shapes_at_once_get_their_own_hashes(monkeypatch):
    """A batch's buffer is kept per list of shapes: two threads checking tensors of the same shapes (grads in one,
    weights in another) must not read each other's copies."""
    monkeypatch.setattr(tensors, "_speedups", None)  # host tensors are batched only without the C speedups
    g = torch.Generator().manual_seed(3)
    lists = [[torch.randn(256, 64, generator=g), torch.randn(64, generator=g)] for _ in range(2)]
    expected = [[tensor_hash(t) for t in ts] for ts in lists]
    wrong: list = []

    def hash_many(i: int) -> None:
        for _ in range(300):
            got = tensors.hashes(lists[i])
            if got != expected[i]:
                wrong.append((i, got))

    threads = [threading.Thread(target=hash_many, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong, wrong[:3]


def test_contents_written_again_are_the_tensors_contents_now():
    """A record after a change of only the grad (or only the data) reuses the other's hash from the last record:
    every record must still say what the tensor holds at that moment."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    records: list[dict] = []
    tracker = Tracker("hash", "proxy")
    tracker.track("model", model, records.append)

    def backward():
        model(torch.randn(2, 4)).sum().backward()

    def replace_data():
        model.weight.data = torch.randn(3, 4)

    def replace_grad():
        model.weight.grad = torch.randn(3, 4)

    def in_place_on_grad():
        model.bias.grad.mul_(3)

    steps = [backward, optimizer.step, optimizer.zero_grad, backward, replace_data, backward, optimizer.step,
             in_place_on_grad, replace_grad, optimizer.step]  # fmt: skip
    for step in steps:
        written = len(records)
        step()
        tracker.check(step.__name__, records.append)
        assert len(records) > written, step.__name__
        for record in records[written:]:
            t = model.weight if record["var_name"] == "model.weight" else model.bias
            expected = (tensor_hash(t), None if t.grad is None else tensor_hash(t.grad))
            assert (record["attributes"]["data"], record["attributes"]["grad"]) == expected, (step.__name__, record["var_name"])


def test_a_sparse_grad_is_tracked_by_its_entries():
    embedding = torch.nn.Embedding(10, 3, sparse=True)
    records: list[dict] = []
    tracker = Tracker("hash", "proxy")
    tracker.track("emb", embedding, records.append)
    grads = []
    for rows in ([1, 2], [3]):
        embedding(torch.tensor(rows)).sum().backward()  # the second adds entries to the sparse grad
        tracker.check("backward", records.append)
        assert records[-1]["attributes"]["grad"] == tensor_hash(embedding.weight.grad)
        grads.append(records[-1]["attributes"]["grad"])
    assert grads[0] != grads[1]
    duplicated = torch.sparse_coo_tensor([[1, 1, 2]], torch.ones(3, 3), (10, 3), check_invariants=True)  # row 1 twice:
    assert tensor_hash(duplicated) == tensor_hash(duplicated.coalesce())  # the same values as its coalesced form


def test_hash_is_the_same_in_another_process():
    code = "import torch; from traincheck_rewrite.runtime.tensors import tensor_hash; torch.manual_seed(3); print(tensor_hash(torch.randn(1000)))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    torch.manual_seed(3)
    assert int(other) == tensor_hash(torch.randn(1000))


def test_stats_are_fresh_and_nan_is_null():
    t = torch.tensor([1.0, 2.0, 3.0])
    assert tensor_stats(t) == {"min": 1.0, "max": 3.0, "mean": 2.0, "std": 1.0, "shape": [3]}
    t.add_(1)
    assert tensor_stats(t)["mean"] == 3.0
    assert tensor_stats(torch.tensor([1.0, float("nan")]))["mean"] is None


@pytest.mark.parametrize("fmt", ["stats", "full"])
def test_stats_and_full_formats_in_a_run(tmp_path: Path, fmt: str):
    fixture = FIXTURES / "tracking"
    traced = run_tc([str(fixture / "config.yaml"), "--tensor-dump-format", fmt], tmp_path, cwd=fixture)
    assert traced.returncode == 0, traced.stderr
    states = [r for r in read_records(traced.run_dir) if r["type"] == "state_change" and r["var_name"] == "model.3.bias"]
    data = [r["attributes"]["data"] for r in states]
    if fmt == "stats":
        assert all(set(d) == {"min", "max", "mean", "std", "shape"} for d in data)
    else:
        assert all(isinstance(d, list) and len(d) == 3 for d in data)
    assert len({str(d) for d in data}) > 5  # the values move with training


def test_ddp_two_ranks_under_torchrun_track_the_unwrapped_model(tmp_path: Path):
    import os

    fixture = FIXTURES / "ddp"
    env = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    plain = run_plain(["bash", "run.sh"], cwd=fixture, env_extra=env)
    traced = run_tc([str(fixture / "config.yaml")], tmp_path, cwd=fixture)
    assert plain.returncode == 0 == traced.returncode, traced.stderr
    assert traced.stdout == plain.stdout and "ranks agree: True" in traced.stdout
    records = list(read_records(traced.run_dir))
    ranks = {r["process_id"] for r in records}
    assert len(ranks) == 2
    for pid in ranks:
        names = {r["var_name"] for r in records if r["type"] == "state_change" and r["process_id"] == pid}
        assert names == {"model.0.weight", "model.0.bias", "model.2.weight", "model.2.bias"}
        steps = [r for r in records if r["process_id"] == pid and r.get("function") == "torch.optim.sgd.SGD.step"]
        assert len(steps) == 10  # 5 pre + 5 post on each rank


HEAD_SWAP = '''import torch
import torch.nn as nn

torch.manual_seed(0)
body = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
body.add_module("head", nn.Linear(8, 2))
model = body
for p in model.parameters():
    p.requires_grad_(False)
model.head = nn.Linear(8, 3)  # a replaced classifier head: its parameters are the only ones trained
optimizer = torch.optim.Adam(model.head.parameters(), lr=0.1)
x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
for step in range(3):
    optimizer.zero_grad()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
model.head.extra = nn.Parameter(torch.zeros(2))  # a parameter registered on a submodule, then changed in place
with torch.no_grad():
    model.head.extra.add_(1.0)
del model.head
print("done")
'''


def test_a_submodule_assigned_after_the_model_was_bound_is_tracked(tmp_path: Path):
    (tmp_path / "train.py").write_text(HEAD_SWAP)
    traced = run_tc(["--pyscript", "train.py", "--models-to-track", "model"], tmp_path / "run", cwd=tmp_path)
    assert traced.returncode == 0 and traced.stdout == "done\n", traced.stderr
    records = sorted(read_records(traced.run_dir), key=lambda r: r["time"])
    init = [r for r in records if r["type"] == "state_change" and r["mode"] == "init"]
    first = {r["var_name"] for r in init if r["dump_loc"] == "track(model)"}
    assert first == {"model.0.weight", "model.0.bias", "model.head.weight", "model.head.bias"}
    new_head = [r for r in init if r["dump_loc"] == "track(model) after an assignment"]
    assert {r["var_name"] for r in new_head} >= {"model.head.weight", "model.head.bias", "model.head.extra"}
    assert [r["attributes"]["shape"] for r in new_head if r["var_name"] == "model.head.weight"][0] == [3, 8]
    # "Adam.step changes Parameter.data": every step changes the new head's weight inside its window
    steps = _windows(records, "torch.optim.adam.Adam.step")
    assert len(steps) == 3
    for window in steps:
        assert _states(records, "model.head.weight", window) and not _states(records, "model.0.weight", window)
    add = _windows(records, "torch.Tensor.add_", programs_only=True)  # the optimizer's own add_ are logged too
    assert len(add) == 1 and [r["attributes"]["data"] for r in _states(records, "model.head.extra", add[0])]
    # the head deleted at the end is forgotten: nothing is written about it after
    deleted_at = add[0][1]
    assert not [r for r in records if r["time"] > deleted_at and r.get("var_name", "").startswith("model.head.")]
