"""summarize() and format_summary() on a run folder built here by hand: every key checked."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
import zstandard

from traincheck_rewrite.trace.summary import format_summary, summarize

PRE, POST, EXC = "function_call (pre)", "function_call (post)", "function_call (post) (exception)"


def lines(records) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def frame(records) -> bytes:
    return zstandard.ZstdCompressor(level=1).compress(lines(records))


class Thread:
    """Records of one thread, with strictly increasing times."""

    def __init__(self, pid: int, tid: int):
        self.pid, self.tid, self.records, self.n = pid, tid, [], 0

    def _rec(self, kind: str, meta: dict | None, **fields) -> dict:
        self.n += 1
        r = {"type": kind, "time": self.n, "process_id": self.pid, "thread_id": self.tid, **fields}
        r["meta_vars"] = {"step": 0} if meta is None else meta
        self.records.append(r)
        return r

    def call(self, function: str, meta=None, end=POST, post_meta=None):
        call_id = self.pid * 10**9 + self.tid * 1000 + self.n
        self._rec(PRE, meta, func_call_id=call_id, function=function, args={}, kwargs={}, proxy_obj_names=[])
        if end is None:
            return
        extra = {"exception": "ValueError", "exception_msg": "no"} if end == EXC else {"return_values": {"NoneType": None}}
        self._rec(end, meta if post_meta is None else post_meta, func_call_id=call_id, function=function, **extra)

    def state(self, var: str, meta=None):
        self._rec("state_change", meta, var_name=var, var_type="torch.nn.Parameter", mode="x", dump_loc="x", attributes={})


def write(folder: Path, name: str, records, torn: bool = False) -> None:
    data = frame(records)
    if torn:
        obj = zstandard.ZstdCompressor(level=1).compressobj()
        data = frame(records[:-1]) + obj.compress(lines(records[-1:])) + obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    (folder / name).write_bytes(data)


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    traces = tmp_path / "traces"
    traces.mkdir()
    a = Thread(100, 1)  # process 100, main thread
    a.call("torch.nn.modules.linear.Linear", meta={"step": 0, "stage": "init"})
    for step in (1, 2, 3):
        train = {"step": step, "stage": "training"}
        a.call("torch.optim.optimizer.Optimizer.zero_grad", meta=train)
        a.call("torch.nn.modules.module.Module.__call__", meta=train)
        a.state("model.0.weight", meta=train)
        a.state("model.0.bias", meta=train)
    a.call("torch.load", meta={"step": 3, "stage": "checkpointing"}, end=EXC)
    a.call("torch.save", meta={"step": 3, "stage": "checkpointing"}, end=None)  # killed mid-call
    b = Thread(100, 2)  # a second thread of the same process: no stage, one bad step value
    b.call("torch.add", meta={"step": True})
    b.call("torch.add", meta={})
    b.call("torch.add", meta={"stage": None, "step": 9.5})
    c = Thread(200, 1)  # a second process (worker): deeper steps, an exception, a state change
    c.call("torch.add", meta={"step": 7, "stage": "evaluation"}, end=EXC)
    c.call("torch.nn.functional.relu", meta={"step": 7, "stage": "evaluation"})
    c.state("model.0.weight", meta={"step": 7, "stage": "evaluation"})
    write(traces, "trace_API_100_1.log.zst", [r for r in a.records if r["type"] != "state_change"])
    write(traces, "trace_VAR_100_1.log.zst", [r for r in a.records if r["type"] == "state_change"])
    write(traces, "trace_API_100_2.log.zst", b.records, torn=True)
    write(traces, "trace_API_200_1.log.zst", [r for r in c.records if r["type"] != "state_change"])
    write(traces, "trace_VAR_200_1.log.zst", [r for r in c.records if r["type"] == "state_change"])
    (tmp_path / "run.json").write_text(json.dumps({"status": "finished", "exit_code": -9, "records": {}}))
    return tmp_path


EXPECTED = {
    # a: 1 + 3*2 + 1 + 1 calls -> 17 API records (the last one open) + 6 state; b: 6; c: 4 + 1 state
    "records": 17 + 6 + 6 + 4 + 1,
    "files": 5,
    "api_calls": 8 + 3 + 2,
    "functions": {
        "torch.add": 4,
        "torch.nn.modules.module.Module.__call__": 3,
        "torch.optim.optimizer.Optimizer.zero_grad": 3,
        "torch.load": 1,
        "torch.nn.functional.relu": 1,
        "torch.nn.modules.linear.Linear": 1,
    },
    "state_changes": 7,
    "variables": 2,
    "processes": 2,
    "threads": 3,
    "max_step": 7,  # True and 9.5 are not steps
    "stages": {"training": 18, "init": 2 + 6, "checkpointing": 3, "evaluation": 5},
    "exceptions": 2,
    "open_calls": 1,
    "truncated_files": 1,
    "bad_lines": 0,
    "ranks": [],
    "exit_code": -9,
}


def test_summary_counts_every_key(run: Path):
    s = summarize(run)
    assert s == EXPECTED
    assert list(s["functions"]) == list(EXPECTED["functions"])  # most calls first, then by name
    json.dumps(s, sort_keys=True)  # what `trace summary --json` prints


def test_summary_of_the_traces_folder_finds_run_json_beside_it(run: Path):
    assert summarize(run / "traces") == EXPECTED
    assert summarize(str(run)) == EXPECTED


def test_exit_code_is_null_without_run_json_or_when_run_json_is_broken(run: Path):
    (run / "run.json").unlink()
    assert summarize(run) == {**EXPECTED, "exit_code": None}
    (run / "run.json").write_text("{broken")
    assert summarize(run)["exit_code"] is None
    (run / "run.json").write_text(json.dumps({"status": "running"}))  # the program still runs: no exit code yet
    assert summarize(run)["exit_code"] is None


def test_open_calls_do_not_depend_on_file_order(tmp_path: Path):
    """A post read before its pre (files of one thread split by a spill) still closes the call."""
    t = Thread(1, 1)
    t.call("torch.add")
    t.call("torch.mul")
    pre, post, pre2, post2 = t.records
    (tmp_path / "traces").mkdir()
    write(tmp_path / "traces", "trace_API_1_1.log.zst", [post, pre, pre2])
    s = summarize(tmp_path)
    assert s["open_calls"] == 1 and s["api_calls"] == 1 and s["functions"] == {"torch.add": 1}


def test_empty_run(tmp_path: Path):
    (tmp_path / "traces").mkdir()
    assert summarize(tmp_path) == {
        "records": 0, "files": 0, "api_calls": 0, "functions": {}, "state_changes": 0, "variables": 0,
        "processes": 0, "threads": 0, "max_step": 0, "stages": {}, "exceptions": 0, "open_calls": 0,
        "truncated_files": 0, "bad_lines": 0, "ranks": [], "exit_code": None,
    }
    text = format_summary(summarize(tmp_path))
    assert "" not in text.splitlines() and len(text.splitlines()) == 15  # the totals only, no empty sections
    assert text.splitlines()[0].split() == ["records", "0"]


def test_format_summary_table(run: Path):
    text = format_summary(summarize(run))
    rows = text.splitlines()
    totals = rows[: rows.index("")]
    assert all(len(r) == 36 for r in totals)  # fixed width: a 24-character label, a 12-character value
    values = {r[:24].strip(): r[24:].strip() for r in totals}
    assert values == {
        "records": "34", "trace files": "5", "truncated": "1", "bad lines": "0", "API calls (completed)": "13",
        "raised": "2", "left open": "1", "distinct functions": "6", "state changes": "7", "variables": "2",
        "processes": "2", "threads": "3", "ranks": "-", "max step": "7", "program exit code": "-9",
    }
    functions = rows[rows.index("") + 1 :]
    functions = functions[: functions.index("")]
    assert functions[0].split() == ["calls", "function", "(top", "6", "of", "6)"]
    assert [r.split() for r in functions[1:]] == [[str(n), f] for f, n in EXPECTED["functions"].items()]
    stages = rows[len(totals) + len(functions) + 2 :]
    assert [r.split() for r in stages] == [["records", "stage"], ["18", "training"], ["8", "init"], ["5", "evaluation"], ["3", "checkpointing"]]


def test_format_summary_shows_the_top_20_functions():
    d = summarize_like(functions={f"torch.f{i:02d}": 100 - i for i in range(25)})
    rows = format_summary(d).splitlines()
    listed = [r.split()[1] for r in rows if r.strip().startswith(tuple("0123456789")) and "torch." in r]
    assert listed == [f"torch.f{i:02d}" for i in range(20)]
    assert "(top 20 of 25)" in format_summary(d)
    exit_row = next(r for r in rows if r.startswith("program exit code"))
    assert exit_row.split()[-1] == "-"  # no run.json


def summarize_like(**over) -> dict:
    d = {**EXPECTED, "stages": {}, "exit_code": None}
    d.update(over)
    return d
