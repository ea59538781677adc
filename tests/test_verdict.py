"""The verdict of `tc-rewrite --check` where a person looks: violation instants on the timeline (`trace export
--format chrome`), the `violations` view of `trace query`, the verdict line of `trace summary`. One buggy run of
fixtures/live (zero_grad skipped from step 8, DataLoader workers: several process tracks, the violations on the
trainer's) checked with invariants inferred from a healthy run, which is the unchecked run."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT, run_tc
from test_live_check import CONFIG, _engine_venv, _invariants, _line_of

SHAPE = ["--workers", "2"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """{"checked": the buggy run folder, "unchecked": the healthy one the invariants came from, "invariants"}."""
    venv = _engine_venv()
    tmp = tmp_path_factory.mktemp("verdict")
    invariants = _invariants(venv, tmp, *SHAPE)
    bug = run_tc([str(CONFIG), "--invariants", str(invariants), "--check", "--checker", str(venv), "--", *SHAPE,
                  "--steps", "30", "--bug-from", "8"], tmp / "bug")  # fmt: skip
    assert bug.returncode == 3, bug.stderr[-3000:]
    return {"checked": bug.run_dir, "unchecked": tmp / "ref", "invariants": invariants}


def tc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "traincheck_rewrite", "trace", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)  # fmt: skip


def verdict(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())["check"]


def violations(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "check" / "violations.jsonl").read_text().splitlines()]


def trainer_pid(run: Path) -> int:
    """The training process: the one that tracks the model (its state file)."""
    (state_file,) = (run / "traces").glob("trace_VAR_*")
    return int(state_file.name.split("_")[2])


def chrome(run: Path, tmp_path: Path, *extra: str) -> list[dict]:
    out = tmp_path / f"timeline_{len(list(tmp_path.glob('timeline_*')))}.json.gz"  # export never writes over a file
    proc = tc("export", str(run), "--format", "chrome", "--to", str(out), *extra)
    assert proc.returncode == 0, proc.stderr
    with gzip.open(out) as f:
        return json.load(f)["traceEvents"]


def test_timeline_has_each_violation_on_the_trainers_thread_at_its_record(runs, tmp_path: Path):
    run = runs["checked"]
    events = chrome(run, tmp_path)
    shown = [e for e in events if e.get("cat") == "violation"]
    assert len(shown) == verdict(run)["violations"] == len(violations(run)) > 0
    names = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events if e["ph"] == "M" and "name" in e["args"]}
    for e in shown:
        assert e["ph"] == "i" and e["s"] == "t" and e["name"].startswith("violation: ")
        assert names[(e["pid"], None)] == f"pid {trainer_pid(run)}"  # the trainer, not one of the 8 workers
        assert names[(e["pid"], e["tid"])].startswith("main thread")
        assert e["args"]["step"] >= 7 and e["args"]["stage"] == "training" and e["args"]["relation"]
    # at the time of a record of that thread: the start or end of one of its call slices, or a state event
    for e in shown:
        times = [t for s in events if (s["pid"], s.get("tid")) == (e["pid"], e["tid"]) and s.get("cat") in ("call", "state")
                 for t in (s["ts"], s["ts"] + s.get("dur", 0))]  # fmt: skip
        assert min(abs(t - e["ts"]) for t in times) < 0.01, e
    forward = _line_of("loss = F.cross_entropy(model(x), y)")
    assert any(f"train.py:{forward}: model(x) (torch.nn.modules.container.Sequential.forward)" in e["args"]["calls"]
               for e in shown)  # fmt: skip
    first = verdict(run)["first_violation"]
    assert shown[0]["args"]["invariant"] == first["invariant"] and shown[0]["args"]["step"] == first["step"]
    # --steps keeps the violations of those steps only
    assert not [e for e in chrome(run, tmp_path, "--steps", "1-5") if e.get("cat") == "violation"]
    later = [e for e in chrome(run, tmp_path, "--steps", "20-30") if e.get("cat") == "violation"]
    assert later and all(20 <= e["args"]["step"] <= 30 for e in later)


def test_query_has_a_row_per_call_of_each_violation(runs):
    run = runs["checked"]
    proc = tc("query", str(run), "SELECT step, invariant, call_step, line FROM violations", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    kept = violations(run)
    assert rows == [{"step": v["step"], "invariant": v["invariant"], "call_step": c.get("step"), "line": c.get("line")}
                    for v in kept for c in v["calls"] or [{}]]  # fmt: skip
    assert all(r["call_step"] is not None and r["call_step"] <= r["step"] for r in rows if r["line"] is not None)
    assert _line_of("loss = F.cross_entropy(model(x), y)") in {r["line"] for r in rows}
    # each violation is at a record of the process it names: it joins the calls or states of that process
    proc = tc("query", str(run), """SELECT count(*) AS n, count(DISTINCT v.process_id) AS processes,
                                           min(v.process_id) AS pid FROM violations v WHERE EXISTS
        (SELECT 1 FROM calls c WHERE c.process_id = v.process_id AND v.time IN (c.pre_time, c.post_time))
        OR EXISTS (SELECT 1 FROM states s WHERE s.process_id = v.process_id AND s.time = v.time)""", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [{"n": len(rows), "processes": 1, "pid": trainer_pid(run)}]


def test_summary_tells_the_verdict(runs):
    run = runs["checked"]
    check = verdict(run)
    proc = tc("summary", str(run))
    assert proc.returncode == 0, proc.stderr
    first = check["first_violation"]
    assert proc.stdout.splitlines()[0] == (
        f"check: {check['invariants']} invariants, {check['violated_invariants']} violated ({check['violations']} "
        f"violations), first at step {first['step']} (training, rank 0): {first['invariant']}")
    proc = tc("summary", str(run), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["check"] == check


def test_summary_of_a_stopped_run_says_where_it_stopped(runs, tmp_path: Path):
    stopped = run_tc([str(CONFIG), "--invariants", str(runs["invariants"]), "--stop-on-violation", "--checker",
                      str(_engine_venv()), "--", *SHAPE, "--steps", "400", "--bug-from", "10", "--step-seconds", "0.15"],
                     tmp_path / "run")  # fmt: skip
    assert stopped.returncode == 3, stopped.stderr[-3000:]
    check = verdict(stopped.run_dir)
    assert check["stopped_at_step"] is not None
    line = tc("summary", str(stopped.run_dir)).stdout.splitlines()[0]
    tail = "" if check["complete"] else "; incomplete (the checker did not see the whole trace)"
    assert line.startswith(f"check: {check['invariants']} invariants, {check['violated_invariants']} violated (")
    assert line.endswith(f": {check['first_violation']['invariant']}; stopped at step {check['stopped_at_step']}{tail}")


def test_an_unchecked_run_has_no_verdict(runs, tmp_path: Path):
    run = runs["unchecked"]
    assert not (run / "check").exists()
    events = chrome(run, tmp_path)
    assert [e for e in events if e.get("cat") == "call"]
    assert not [e for e in events if e.get("cat") == "violation"]
    proc = tc("query", str(run), "SELECT * FROM violations")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].split() == ["time", "step", "stage", "rank", "thread", "relation", "invariant",
                                                   "function", "call_step", "file", "line", "source", "variable", "process_id",
                                                   "thread_id", "run"]  # fmt: skip
    assert proc.stdout.splitlines()[-1] == "(0 rows)"
    proc = tc("summary", str(run))
    assert proc.returncode == 0 and "check:" not in proc.stdout and proc.stdout.startswith("records")
    assert "check" not in json.loads(tc("summary", str(run), "--json").stdout)


def test_a_damaged_violations_file_is_one_line_naming_it(runs, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(runs["checked"], run)
    with open(run / "check" / "violations.jsonl", "a") as f:
        f.write("[1, 2]\n")
    bad_line = len(violations(runs["checked"])) + 1
    for args in (["query", str(run), "SELECT count(*) FROM violations"],
                 ["export", str(run), "--format", "chrome", "--to", str(tmp_path / "t.json")]):  # fmt: skip
        proc = tc(*args)
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        assert proc.stderr == f"tc-rewrite: error: {run}/check/violations.jsonl:{bad_line}: not a JSON object\n"
    assert not (tmp_path / "t.json").exists()
