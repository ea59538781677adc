"""`tc-rewrite trace export --format chrome` on real runs of fixtures/diverge: valid Trace Event JSON, one slice per
logged call nested as the calls nested, steps, stage and state instants, the per-step counter, and thinning."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from helpers import FIXTURES, ROOT
from traincheck_rewrite.trace import read_records
from traincheck_rewrite.trace.summary import summarize

DIVERGE = FIXTURES / "diverge"
EPS = 1e-6  # us: ts and dur are exact ns / 1000, so only float rounding separates a child's end from its parent's


def export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "traincheck_rewrite", "trace", "export", "--format", "chrome", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def load(path: Path) -> dict:
    raw = path.read_bytes()
    data = json.loads(gzip.decompress(raw) if path.name.endswith(".gz") else raw)
    assert isinstance(data, dict) and isinstance(data["traceEvents"], list)
    for e in data["traceEvents"]:
        assert e["ph"] in {"M", "X", "i", "C"} and isinstance(e["pid"], int) and isinstance(e["name"], str)
        if e["ph"] != "M":
            assert isinstance(e["ts"], (int, float)) and e["ts"] >= 0
        if e["ph"] in ("X", "i"):
            assert isinstance(e["tid"], int)
        if e["ph"] == "X":
            assert isinstance(e["dur"], (int, float)) and e["dur"] >= 0
    return data


def calls(data: dict) -> list[dict]:
    return [e for e in data["traceEvents"] if e["ph"] == "X" and e["cat"] == "call"]


@pytest.fixture(scope="module")
def deep(traced) -> Path:
    """A run whose optimizer's inner calls are logged too (rewrite_libraries), so calls really nest."""
    return traced(DIVERGE / "deep.yaml")


@pytest.fixture(scope="module")
def deep_export(deep, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("chrome") / "deep.json.gz"
    proc = export(str(deep), "--to", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "" and "call slices" in proc.stderr
    return load(out)


def test_one_slice_per_logged_call(deep, deep_export):
    summary = summarize(deep)
    assert summary["open_calls"] == 0 and summary["api_calls"] > 100
    slices = calls(deep_export)
    assert len(slices) == summary["api_calls"]
    assert Counter(e["name"] for e in slices) == Counter(summary["functions"])
    assert len({e["args"]["call_id"] for e in slices}) == len(slices)


def test_slices_nest_per_thread_as_the_calls_nested(deep_export):
    by_thread = defaultdict(list)
    for e in calls(deep_export):
        by_thread[(e["pid"], e["tid"])].append(e)
    nested = 0
    for slices in by_thread.values():
        stack: list[dict] = []
        for e in sorted(slices, key=lambda e: (e["ts"], -e["dur"])):
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= e["ts"] + EPS:  # record times differ by >= 1 ns
                stack.pop()
            if stack:  # inside the slice on top: it must end inside it too, and be the call's logged parent
                top = stack[-1]
                assert e["ts"] + e["dur"] <= top["ts"] + top["dur"] + EPS, (e, top)
                assert e["args"]["parent_id"] == top["args"]["call_id"], (e, top)
                nested += 1
            else:
                assert e["args"]["parent_id"] is None, e
            stack.append(e)
    assert nested > 50  # the optimizer's inner calls sit inside its step()


def test_tracks_steps_stages_states_and_counter(deep, deep_export):
    events = deep_export["traceEvents"]
    meta = {(e["name"], e.get("tid")): e["args"] for e in events if e["ph"] == "M"}
    (pid,) = {r["process_id"] for r in read_records(deep)}
    assert {e["pid"] for e in events} == {pid}  # the real pid, which viewers print after the name
    assert meta[("process_name", None)]["name"] == f"pid {pid}"
    assert meta[("thread_name", pid)]["name"] == "main thread"  # tid = pid: the main thread, as on Linux
    (steps_tid,) = {e["tid"] for e in events if e["ph"] == "X" and e["cat"] == "step"}
    assert steps_tid != pid and meta[("thread_name", steps_tid)]["name"] == "steps"
    assert meta[("thread_sort_index", pid)]["sort_index"] < meta[("thread_sort_index", steps_tid)]["sort_index"]
    assert {e["tid"] for e in calls(deep_export)} == {pid}
    steps = sorted((e for e in events if e["ph"] == "X" and e["cat"] == "step"), key=lambda e: e["ts"])
    assert [e["name"] for e in steps] == [f"step {n}" for n in range(9)]
    assert all(a["ts"] + a["dur"] <= b["ts"] + EPS for a, b in zip(steps, steps[1:]))  # one track: no overlap
    records_per_step = Counter(r["meta_vars"]["step"] for r in read_records(deep))
    counter = [e for e in events if e["ph"] == "C"]
    assert [(e["name"], e["args"]["records"]) for e in counter] == [("records per step", records_per_step[n]) for n in range(9)]
    assert all(e["pid"] == pid for e in steps + counter)
    stages = [e["args"]["stage"] for e in events if e["ph"] == "i" and e["cat"] == "stage"]
    assert stages == ["init", "training"]
    states = [e for e in events if e["ph"] == "i" and e["cat"] == "state"]
    assert len(states) == summarize(deep)["state_changes"]
    first = {}
    for e in sorted(states, key=lambda e: e["ts"]):
        first.setdefault(e["args"]["var"], e["args"]["changed"])
    assert set(first) == {"model.0.weight", "model.0.bias", "model.2.weight", "model.2.bias"}
    assert all(changed == ["(first record)"] for changed in first.values())
    later = Counter(c for e in states for c in e["args"]["changed"])
    assert later["grad"] > 0 and later["data"] > 0


def test_steps_and_ranks_thin_the_timeline(traced, tmp_path: Path):
    run = traced(DIVERGE / "ddp.yaml")
    full = tmp_path / "full.json"
    assert export(str(run), "--to", str(full)).returncode == 0
    data = load(full)
    pid_of = {r["meta_vars"]["rank"]: r["process_id"] for r in read_records(run, kinds=("API",))}
    meta = [e for e in data["traceEvents"] if e["ph"] == "M"]
    names = {e["pid"]: e["args"]["name"] for e in meta if e["name"] == "process_name"}
    assert names == {pid_of[rank]: f"rank {rank} (pid {pid_of[rank]})" for rank in (0, 1)}
    order = {e["pid"]: e["args"]["sort_index"] for e in meta if e["name"] == "process_sort_index"}
    assert order == {pid_of[0]: 0, pid_of[1]: 1}
    threads = [(e["pid"], e["tid"]) for e in meta if e["name"] == "thread_name"]
    assert len(set(threads)) == len({tid for _, tid in threads}) == 4  # main thread and steps per rank, no tid shared
    expected = Counter(r["meta_vars"].get("rank") for r in read_records(run, kinds=("API",))
                       if r["type"] == "function_call (pre)" and r["meta_vars"].get("step") in (2, 3))
    thin = tmp_path / "thin.json.gz"
    proc = export(str(run), "--to", str(thin), "--steps", "2-3", "--ranks", "1")
    assert proc.returncode == 0, proc.stderr
    data = load(thin)
    slices = calls(data)
    assert {e["args"]["step"] for e in slices} == {2, 3} and len(slices) == expected[1]
    assert [e["args"]["name"].split(" (pid ")[0] for e in data["traceEvents"] if e["name"] == "process_name"] == ["rank 1"]
    assert sorted(e["name"] for e in data["traceEvents"] if e["ph"] == "X" and e["cat"] == "step") == ["step 2", "step 3"]


def test_bad_arguments_are_one_line_errors(traced, tmp_path: Path):
    run = str(traced(DIVERGE / "config.yaml"))
    for args, message in [
        (["--to", str(tmp_path)], "is a folder"),
        (["--to", str(tmp_path / "t.json"), "--steps", "x"], "--steps x: expected A-B"),
        (["--to", str(tmp_path / "t.json"), "--steps", "5-2"], "first step is after the last"),
        (["--to", str(tmp_path / "t.json"), "--ranks", "3"], "no rank 3 in the trace"),
    ]:
        proc = export(run, *args)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and message in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "t.json").exists() and not list(tmp_path.glob(".t.json*"))


def test_folders_that_share_a_pid_keep_their_tracks_apart(tmp_path: Path):
    """Two nodes' run folders can hold the same pid: each process still gets a pid and tracks of its own."""
    from test_trace_tools_cases import Proc, write

    n0 = write(tmp_path / "n0", Proc(7, 0, 2).training([1, 2]))
    n1 = write(tmp_path / "n1", Proc(7, 1, 2).training([1, 2]))
    proc = export(str(n0), str(n1), "--to", str(tmp_path / "t.json"))
    assert proc.returncode == 0, proc.stderr
    events = load(tmp_path / "t.json")["traceEvents"]
    names = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert sorted(names.values()) == ["rank 0 (pid 7)", "rank 1 (pid 7)"] and len(names) == 2
    tracks = {(e["pid"], e["tid"]) for e in events if e["ph"] in ("X", "i")}
    assert len(tracks) == 4 and len({tid for _, tid in tracks}) == 4
    for pid in names:  # each process's main thread has the process's own number
        assert {e["tid"] for e in calls({"traceEvents": events}) if e["pid"] == pid} == {pid}
