"""The recorder's C speedups (runtime/_speedups.c) give exactly what their Python reference gives: record batches
encoded byte for byte alike (hand-made edge cases, and every batch of a real training run), tensor envelopes as
JSON text equal to the envelope dicts with the same data ids."""

from __future__ import annotations

import gc
import re
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import torch

from helpers import FIXTURES, ROOT, run_tc
from traincheck_rewrite.runtime import _speedups, encode, logged_importlib_bootstrap, values  # noqa: F401  (configures the C calls)
from traincheck_rewrite.runtime.lookup import _info

PRE, POST, EXC, DICT = encode.PRE, encode.POST, encode.EXC, encode.DICT


def _both(records: list, since: int | None = None, last_time: int = 0) -> tuple:
    python = encode.encode_in_python([*records], 41, 7, last_time, since)
    c = _speedups.encode([*records], 41, 7, last_time, since)
    return python, c


def test_encode_in_c_equals_python_on_every_kind_of_record():
    info = _info("torch.nn.functional.linear", False)
    bound = _info("torch.nn.modules.linear.Linear.forward", True)
    meta = {"step": 0, "stage": "init", "note": "naïve ✓"}
    other = {"step": 3, "stage": "training"}
    t = time.monotonic_ns()
    records = [
        (PRE, 1, t, meta, info, 12, None, None, ('{"int":1}', '{"str":"é"}'), None, ()),
        (PRE, 2, t, meta, bound, "torch/nn/modules/linear.py:125", 2**62, 1, (), {"bias": '{"bool":true}', "naïve": "{}"}, (["model", "fc"],)),
        (POST, 2, t, meta, bound, 1, '{"torch.Tensor":{"shape":[2]},"data_id":4}'),
        (EXC, 1, t - 5, other, info, None, "ValueError", 'bad "value"\n\u2028'),  # time goes back: made increasing
        (DICT, None, t + 9, other, {"type": "state_change", "var_name": "w", "attributes": {"data": -5}}),
        (DICT, None, t + 10, None, {"type": "finished", "time": 1}),
        (DICT, None, t + 11, meta, {"type": "state_change", "bad": object()}),  # cannot be encoded: skipped, warned
        (PRE, 3, t + 12, other, info, 0, -1, 2, tuple(f'{{"int":{i}}}' for i in range(20)), {}, ()),
    ]
    python, c = _both(records)
    assert python == c
    lines = python[0].splitlines()
    assert len(lines) == len(records) - 1 and all(isinstance(orjson.loads(line), dict) for line in lines)
    relabel_python, relabel_c = _both(records, since=t)
    assert relabel_python == relabel_c and b'"stage":"training"' in relabel_c[0].split(b"\n")[0]
    assert _both([], last_time=5) == ((b"", 5), (b"", 5))


def test_encode_in_c_refuses_what_is_no_record_batch():
    with pytest.raises(TypeError):
        _speedups.encode(["not a tuple"], 1, 1, 0, None)
    with pytest.raises(TypeError):
        _speedups.encode([(PRE, 1, 5, {}, _info("torch.f", False), 1, None, None, ["not", "a tuple"], None, ())], 1, 1, 0, None)


_PROBE = """
import runpy, sys
from traincheck_rewrite.runtime import encode, writer
counts = {"batches": 0, "differ": 0, "records": 0}
def both(records, pid, tid, last_time, since=None):
    python = encode.encode_in_python(records, pid, tid, last_time, since)
    c = encode._c_encode(records, pid, tid, last_time, since)
    counts["batches"] += 1
    counts["records"] += len(records)
    counts["differ"] += python != c
    return c
writer.encode = both
try:
    runpy.run_path(sys.argv[1], run_name="__main__")
finally:
    from traincheck_rewrite.runtime import recorder
    recorder.flush_all(close=True)
    print("COUNTS", counts, file=sys.stderr)
"""


def test_every_batch_of_a_real_run_encodes_alike_in_c_and_python(tmp_path: Path):
    made = run_tc([str(FIXTURES / "mlp" / "config.yaml"), "--only-instr"], tmp_path / "run", cwd=FIXTURES / "mlp")
    assert made.returncode == 0, made.stderr
    env = {"PYTHONPATH": str(ROOT), "TC_REWRITE_RUN_DIR": str(made.run_dir), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(made.run_dir / "train.py")], cwd=FIXTURES / "mlp",
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = eval(proc.stderr.rsplit("COUNTS", 1)[1])
    assert counts["batches"] >= 3 and counts["records"] > 500 and counts["differ"] == 0, counts


def _envelope_with_id(t) -> dict:
    shared = values._shared_tensor_envelope(t)
    data_id = values._data_id(t)
    return shared if data_id is None else {**shared, "data_id": data_id}


def test_a_tensors_text_is_its_envelope_with_its_data_id_alike_in_c_and_python():
    base = torch.ones(3, 4)
    param = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    nonleaf = (param * 2).sum()
    cases = [base, base[1], base.t(), param, nonleaf, torch.arange(5), torch.ones(2, dtype=torch.bool),
             torch.ones(2, 2).to_sparse(), torch.tensor(1.5)]  # fmt: skip
    for t in cases:
        values.encoded(t)  # its kind is known from now on
        text = _speedups.tensor_text(t)
        assert text == values._tensor_text_in_python(t)  # one data id table: the same id either way
        assert orjson.loads(text) == orjson.loads(orjson.dumps(_envelope_with_id(t))), t
    ids = [orjson.loads(_speedups.tensor_text(t)).get("data_id") for t in (base, base[1], base.t(), param)]
    assert ids[0] == ids[1] == ids[2] != ids[3]  # views share their storage's id; another tensor has its own
    assert "data_id" not in orjson.loads(_speedups.tensor_text(cases[7]))  # sparse: no storage


@pytest.mark.parametrize("data_id", [values._data_id_in_python, _speedups.data_id], ids=["python", "c"])
def test_a_storage_keeps_its_id_while_it_lives_and_a_new_one_gets_a_new_id(data_id):
    a = torch.ones(4)
    first = data_id(a)
    assert data_id(a.view(2, 2)) == first and data_id(a) == first
    seen = {first}
    for _ in range(50):  # storages die and their addresses are reused: each new one is new
        b = torch.zeros(4)
        n = data_id(b)
        assert n not in seen
        seen.add(n)
        del b
    assert data_id(a) == first


class _MyTensor(torch.Tensor):
    pass


def _values_to_number() -> tuple[object, list]:
    """A call's values with tensors everywhere `encoded` looks (and some it does not: past the 16th item), fresh
    storages each time; and the tensors in the order the values hold them."""
    ts = [torch.ones(2) for _ in range(44)]
    sub = torch.zeros(3).as_subclass(_MyTensor)
    param = torch.nn.Parameter(torch.ones(2))
    value = [ts[0], (ts[1], ts[0].view(2, 1)), {"a": ts[2], 3: [ts[3], None, "x", 1.5]}, param, sub, torch.float32,
             torch.nn.Linear(1, 1), ts[4:24], {f"k{i}": ts[24 + i] for i in range(20)}]  # fmt: skip
    return value, [*ts, sub, param]


@pytest.mark.parametrize("number", [values.number, _speedups.number], ids=["python", "c"])
def test_numbering_gives_data_ids_in_the_order_encoding_gives_them(number):
    """`number` (a call whose values are not kept) must give each tensor the id `encoded` would give it: the same
    tensors in the same order, and none past the 16th item of a list or dict. The C version must agree with the
    Python one on a nested value with a tensor subclass, a parameter, shared storages and long lists."""
    reference, ref_tensors = _values_to_number()
    values.encoded(reference)
    expected = [values._data_ids.get(id(t.untyped_storage()), (None, None))[1] for t in ref_tensors]
    value, tensors = _values_to_number()
    number(value)
    got = [values._data_ids.get(id(t.untyped_storage()), (None, None))[1] for t in tensors]
    assert [g is None for g in got] == [e is None for e in expected]
    known = [(e, g) for e, g in zip(expected, got) if e is not None]
    assert [g - known[0][1] for _, g in known] == [e - known[0][0] for e, _ in known]  # the same order of appearance
    assert expected.count(None) > 0  # the value does reach past what is numbered


def test_numbering_in_c_finds_a_tensor_type_it_has_not_met():
    """A type the C numbering does not know goes to the Python code once, which may find it is a tensor type."""

    class Fresh(torch.Tensor):
        pass

    t = torch.ones(3).as_subclass(Fresh)
    _speedups.number({"x": [1, t]})
    assert Fresh in values._tensor_types and id(t.untyped_storage()) in values._data_ids
    u = torch.ones(3).as_subclass(Fresh)
    _speedups.number(u)  # known now: numbered in C
    assert id(u.untyped_storage()) in values._data_ids


@pytest.mark.parametrize("number", [values.number, _speedups.number], ids=["python", "c"])
def test_numbering_a_value_that_holds_itself_raises_recursion_error(number):
    loop: list = [torch.ones(1)]
    loop.append(loop)
    with pytest.raises(RecursionError):
        number(loop)


def _records_of(tmp_path: Path, wrap, plain: bool) -> tuple[list, list]:
    """The records of a set of logged calls made through `wrap(site, fn, info, owner)`, with call numbers counted from
    the first, times and data ids left out (new tensors get new ids), and what each call returned or raised. `plain`:
    calls may take the plain path (as in a program's main process), else all go the general way (as while a
    DataLoader worker learns its id)."""
    from traincheck_rewrite.runtime import lookup, recorder

    recorder.start(str(tmp_path), ("torch",))  # torch is imported: the recorder expects to be a DataLoader worker
    recorder._state.worker_check, recorder._state.plain = (0, True) if plain else (1000, False)
    try:
        x = torch.ones(2, 2)
        model = torch.nn.Linear(2, 2)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

        def logged(fn):
            info, owner = lookup.lookup(fn)
            return wrap(1, fn, info, owner)

        outcomes = [
            logged(torch.add)(x, x, alpha=2),  # keyword arguments
            logged(x.add)(1),  # a bound C method: its owner first
            logged(torch.nn.functional.linear)(x, model.weight),
            logged(torch.split)(torch.arange(4), 2),  # a tuple returned
            logged(torch.get_default_dtype)(),
        ]
        try:
            logged(torch.matmul)(torch.ones(2, 3), torch.ones(2, 3))
        except RuntimeError as exc:
            outcomes.append([f.name for f in __import__("traceback").extract_tb(exc.__traceback__)])
        loss = logged(model)(x).sum()  # a tracked-state-free module call: the general path (forward)
        loss.backward()
        logged(optimizer.step)()  # the general path: a role
        records = [r for r in recorder._state.local.thread.records]
        untracked = [not gc.is_tracked(r) for r in records]
    finally:
        recorder.flush_all(close=True)
        recorder._set_state(None)
    first = records[0][1]
    strip = lambda v: re.sub(r',"data_id":\d+', "", v) if isinstance(v, str) else v  # noqa: E731
    kept = []
    for r in records:
        r = list(r)
        r[1] -= first
        r[2] = None
        if r[0] == PRE:
            r[7] = None if r[7] is None else r[7] - first
            r[6] = r[6] is not None  # an object's address: present or not
            r[8] = tuple(map(strip, r[8]))
            r[9] = r[9] and {k: strip(v) for k, v in r[9].items()}
        elif r[0] in (POST, EXC):
            r[5] = None if r[5] is None else r[5] - first
            r[6] = strip(r[6])
        r[3] = dict(r[3])
        kept.append(r)
    return kept, [o if isinstance(o, list) else type(o).__name__ for o in outcomes], untracked


@pytest.mark.parametrize("plain", [True, False], ids=["plain-path", "general-path"])
def test_the_c_wrapper_keeps_the_records_of_the_python_wrapper_and_adds_no_frame(tmp_path: Path, plain: bool):
    """The Python `logged` stays the reference and the fallback: both wrappers give the same records and results; a
    traceback through the C one has no frame of the recorder (the Python one has `logged`). The C wrapper's plain
    path keeps its records out of the garbage collector's lists (they would grow its oldest generation)."""
    from types import MethodType

    from traincheck_rewrite.runtime import logged_importlib_bootstrap as calls

    c_records, c_outcomes, c_untracked = _records_of(tmp_path / "c", _speedups.logged_call, plain)
    py_records, py_outcomes, _ = _records_of(tmp_path / "py", lambda *ctx: MethodType(calls.logged, ctx), plain)
    assert c_records == py_records and len(c_records) > 10
    assert sum(c_untracked) >= (8 if plain else 0)  # the five calls before the exception, and the exception's pre
    assert {r[0] for r in c_records} == {PRE, POST, EXC}
    assert c_outcomes[-1] == ["_records_of"] and py_outcomes[-1][:2] == ["_records_of", "logged"]
    assert c_outcomes[:-1] == py_outcomes[:-1]
