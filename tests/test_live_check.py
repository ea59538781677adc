"""Checking while the program trains: TrainCheck's own online checker (traincheck==0.2.0, its virtualenv made by
scripts/traincheck_venv.sh) follows the run folder as the live export writes it, and `tc-rewrite --check` /
`--stop-on-violation` run that checker for the user. Invariants come from a healthy 20-step run of fixtures/live; the
buggy runs skip `zero_grad` from a known step."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import FIXTURES, ROOT, _env, run_tc
from traincheck_rewrite.trace import read_records

CONFIG = FIXTURES / "live" / "config.yaml"
TRAIN = FIXTURES / "live" / "train.py"


def _engine_venv() -> Path:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "traincheck_venv.sh")], capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        pytest.skip(f"TrainCheck's virtualenv cannot be made: {proc.stderr[-500:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def venv() -> Path:
    return _engine_venv()


def _invariants(venv: Path, tmp: Path, *args: str) -> Path:
    """Invariants TrainCheck's engine infers from a healthy 20-step run of fixtures/live with `args`."""
    ref = run_tc([str(CONFIG), "--", *args], tmp / "ref")
    assert ref.returncode == 0, ref.stderr[-2000:]
    out = tmp / "inv.json"
    proc = subprocess.run([str(venv / "bin" / "traincheck-infer"), "-f", str(ref.run_dir), "-o", str(out)], cwd=tmp,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0 and out.read_text().strip(), proc.stderr[-2000:]
    return out


def _line_of(text: str) -> int:
    return next(n for n, line in enumerate(TRAIN.read_text().splitlines(), 1) if line.strip().startswith(text))


def _tc(args: list[str], cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "traincheck_rewrite", *args], cwd=cwd, env=_env(), text=True, **kw)


def _failed_results(failed_log: Path) -> list[dict]:
    """The violations TrainCheck's checker wrote so far (indented JSON objects one after the other)."""
    text = failed_log.read_text() if failed_log.exists() else ""
    decoder, at, results = json.JSONDecoder(), 0, []
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        try:
            result, at = decoder.raw_decode(text, at)
        except json.JSONDecodeError:
            return results
        results.append(result)


def _failed_steps(failed_log: Path) -> list[tuple[int, str]]:
    """The step and invariant of each violation the checker wrote so far."""
    return [(max(int(r["meta_vars.step"]) for r in result["trace"]), result["invariant"]["text_description"])
            for result in _failed_results(failed_log)]  # fmt: skip


def test_traincheck_online_checker_started_on_an_empty_folder_reports_while_the_program_runs(venv: Path, tmp_path: Path):
    """The checker is started before tc-rewrite, on the empty run folder. The run has DataLoader workers (a new pair
    every 8 steps) and a thread that ends at the start: trace files that stop growing while the run goes on, which
    would hold the checker back at their last record for good. The bug begins at step 30 of 80, so a violation
    reported while the program runs shows that the checker got past every file that stopped. (TrainCheck's checker
    may also report false alarms here, from files it attaches after it took newer records of others: `--check`'s
    driver attaches them first; the test of --check below asserts no violation before the bug.)"""
    shape = ["--workers", "2", "--side-thread"]
    invariants = _invariants(venv, tmp_path, *shape)
    run = tmp_path / "run"
    run.mkdir()
    checker = subprocess.Popen([str(venv / "bin" / "traincheck-onlinecheck"), "-f", str(run), "-i", str(invariants), "-o",
                                str(tmp_path / "online")], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(2)
        tc = _tc([str(CONFIG), "--output-dir", str(run), "--", *shape, "--steps", "80", "--bug-from", "30",
                  "--step-seconds", "0.15"], tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
        seen_while_running: list[int] = []
        while tc.poll() is None:
            steps = [step for step in _failed_steps(tmp_path / "online" / "failed.log") if step[0] >= 29]
            if steps and tc.poll() is None:
                seen_while_running = steps
                break
            time.sleep(0.2)
        _, err = tc.communicate(timeout=300)
        assert tc.returncode == 0, err[-2000:]
    finally:
        checker.send_signal(signal.SIGINT)
        checker.wait(60)
    # a lead violation names the call before the one that shows it: step 29
    assert seen_while_running, "TrainCheck's checker reported nothing of the bug while the program ran"
    assert any("zero_grad" in text for _, text in seen_while_running), seen_while_running
    assert (tmp_path / "online" / "report.html").exists()


def test_check_tells_each_violation_at_the_programs_line_and_exits_3(venv: Path, tmp_path: Path):
    invariants = _invariants(venv, tmp_path)
    result = run_tc([str(CONFIG), "--invariants", str(invariants), "--check", "--checker", str(venv), "--",
                     "--steps", "30", "--bug-from", "8"], tmp_path / "bug")  # fmt: skip
    assert result.returncode == 3, result.stderr[-3000:]
    told = [line for line in result.stderr.splitlines() if "violation at step" in line]
    assert told and all(int(line.split("violation at step ")[1].split()[0]) >= 7 for line in told), told
    forward = _line_of("loss = F.cross_entropy(model(x), y)")
    assert f"tc-rewrite:     train.py:{forward}: model(x)" in result.stderr  # the call's own line and text
    assert result.program_stderr == "", result.program_stderr  # every line of ours says it is ours
    summary = [line for line in result.stderr.splitlines() if line.startswith("tc-rewrite: check: ")]
    assert len(summary) == 1 and "violated" in summary[0] and "the first at step " in summary[0], summary
    info = json.loads((result.run_dir / "run.json").read_text())
    verdict = info["check"]
    assert info["exit_code"] == 0 and verdict["complete"] and verdict["violations"] >= 1, verdict
    assert verdict["first_violation_step"] in (7, 8) and verdict["invariants"] == len(invariants.read_text().splitlines())
    for name in ("report.html", "failed.log", "violations.jsonl"):
        assert (result.run_dir / "check" / name).exists(), name
    kept = [json.loads(line) for line in (result.run_dir / "check" / "violations.jsonl").read_text().splitlines()]
    assert len(kept) == verdict["violations"] and {v["rank"] for v in kept} == {0}
    assert any(c.get("line") == forward for v in kept for c in v["calls"])

    healthy = run_tc([str(CONFIG), "--invariants", str(invariants), "--check", "--checker", str(venv), "--", "--steps", "30"],
                     tmp_path / "healthy")  # fmt: skip
    assert healthy.returncode == 0, healthy.stderr[-3000:]
    assert "violation at step" not in healthy.stderr
    assert json.loads((healthy.run_dir / "run.json").read_text())["check"]["violations"] == 0


def test_stop_on_violation_ends_the_run_within_two_steps_of_the_report(venv: Path, tmp_path: Path):
    invariants = _invariants(venv, tmp_path)
    run = tmp_path / "run"
    tc = _tc([str(CONFIG), "--output-dir", str(run), "--invariants", str(invariants), "--stop-on-violation", "--checker",
              str(venv), "--", "--steps", "400", "--bug-from", "10", "--step-seconds", "0.15"], tmp_path,
             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    out, _ = tc.communicate(timeout=300)
    assert tc.returncode == 3, out[-3000:]
    lines = out.splitlines()
    stop = next(i for i, line in enumerate(lines) if line.startswith("tc-rewrite: stopping the program at step"))
    last_step_before = max(int(line.split()[1]) for line in lines[:stop] if line.startswith("step "))
    last_step = max(int(line.split()[1]) for line in lines if line.startswith("step "))
    assert last_step - last_step_before <= 2, lines[stop - 3 : stop + 5]
    assert last_step < 60, last_step
    info = json.loads((run / "run.json").read_text())
    assert info["exit_code"] == 128 + signal.SIGTERM and info["check"]["stopped_at_step"] >= 10
    assert info["plain_traces"]["written"] and info["records"]["truncated_files"] == 0
    steps = [r["meta_vars"]["step"] for r in read_records(run) if "meta_vars" in r]
    assert max(steps) >= 10


def test_a_missing_engine_is_one_line_before_anything_runs(tmp_path: Path):
    inv = tmp_path / "inv.json"
    inv.write_text("")
    run = tmp_path / "run"
    env = {"PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin"}  # no traincheck-onlinecheck
    for extra in ([], ["--checker", str(tmp_path / "nowhere")]):
        proc = subprocess.run([sys.executable, "-m", "traincheck_rewrite", str(CONFIG), "--output-dir", str(run), "--invariants",
                               str(inv), "--check", *extra], cwd=tmp_path, env=_env(env), capture_output=True, text=True)  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "TrainCheck" in proc.stderr and "--checker" in proc.stderr, proc.stderr
        assert not run.exists()
    proc = subprocess.run([sys.executable, "-m", "traincheck_rewrite", str(CONFIG), "--check"], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and "--invariants" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


FIRST_READ = """
import json, sys
sys.path.insert(0, sys.argv[1])
import onlinecheck_driver as driver
from traincheck.onlinechecker import streamhandler_filesystem as handlers

path = sys.argv[2]
handlers.StreamLogHandler._save_initial_content = driver._initial_content
handlers.StreamLogHandler.__init__ = driver._init_reading_on
handle = handlers.StreamLogHandler._handle_line


def handle_while_the_export_writes(self, lines):
    handle(self, lines)
    if not getattr(self, "appended", False):  # the live export appends the end mark while these lines are handled
        self.appended = True
        with open(path, "a") as f:
            f.write(json.dumps({"time": 99, "end_of_trace": 1}) + "\\n")


handlers.StreamLogHandler._handle_line = handle_while_the_export_writes
data = driver._CheckerData((set(), set(), set()))
handler = handlers.StreamLogHandler(path, data)
driver._read_lines(handler)  # what the next modification event reads
print(json.dumps([data.check_queue.get_nowait() for _ in range(data.check_queue.qsize())]))
"""


def test_the_checker_reads_what_was_appended_while_it_handled_a_files_first_lines(venv: Path, tmp_path: Path):
    """TrainCheck's handler seeks to the end of a file after handling the lines it found there: what the live export
    appended meanwhile was never read, and a short run whose end marks were among it left `--check` waiting for
    good (the driver reads on from where the first read stopped)."""
    trace = tmp_path / "trace_API_all.log"
    trace.write_text("".join(json.dumps({"time": t}) + "\n" for t in (1, 2)))
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", FIRST_READ, str(ROOT / "traincheck_rewrite"), str(trace)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    queued = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["time"] for r in queued] == [1, 2, 99] and queued[-1]["end_of_trace"] == 1


NEW_FILE = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
import onlinecheck_driver as driver
from traincheck.onlinechecker import streamhandler_filesystem as handlers

folder = sys.argv[2]
handlers.StreamLogHandler._save_initial_content = driver._initial_content
handlers.StreamLogHandler.__init__ = driver._init_reading_on


class Observer:
    def schedule(self, handler, path, recursive):  # the live export writes its end mark before the handler watches
        with open(handler.file_path, "a") as f:
            f.write(json.dumps({"time": 99, "end_of_trace": 1}) + "\\n")


data = driver._CheckerData((set(), set(), set()))
driver._KnownFolder(folder, data, Observer()).attach_new()
print(json.dumps([data.check_queue.get_nowait() for _ in range(data.check_queue.qsize())]))
"""


def test_the_checker_reads_what_was_appended_to_a_new_file_before_it_watched_it(venv: Path, tmp_path: Path):
    """A file found while the program runs is read, then watched: what was appended in between raised no event its
    handler saw, and a state file made near the end of a short run never gave `--check` its end mark."""
    (tmp_path / "trace_VAR_0_0.log").write_text(json.dumps({"time": 1}) + "\n")
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", NEW_FILE, str(ROOT / "traincheck_rewrite"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["time"] for r in json.loads(proc.stdout.strip().splitlines()[-1])] == [1, 99]


REPORTS = """
import json, sys
sys.path.insert(0, sys.argv[1])
import onlinecheck_driver as driver
from traincheck.reporting.checker_report import ReportEmitter

ReportEmitter._should_emit = driver._report_due
emitter = ReportEmitter(sys.argv[2], no_html_report=True, report_wandb=False, report_mlflow=False,
                        report_interval_seconds=2, args=None)
emitter.emit({}, force=True, report_state=(0, 0))
due = [emitter.should_emit((found, 1), False) for found in (1, 2, 3)]  # three violations found within the interval
due.append(emitter.should_emit((3, 1), True))  # the report at the end
emitter._last_report_ts -= 2
due.append(emitter.should_emit((3, 1), False))
print(json.dumps(due))
"""


def test_the_checkers_report_is_rebuilt_once_an_interval_however_many_violations(venv: Path, tmp_path: Path):
    """TrainCheck's checker rebuilt `report.html` after each violation, re-serialising all of them each time: a run
    with 1,791 violations spent two thirds of its check on reports and fell behind the program."""
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", REPORTS, str(ROOT / "traincheck_rewrite"), str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [False, False, False, True, True]


def _lead_trace(folder: Path) -> None:
    """Evaluation forwards at steps 1, 2 and 3 (calls 1, 3, 4): a `make_block()` follows the first only."""
    lines, time_ns = [], 1000
    for call, function, step in ((1, "m.forward", 1), (2, "m.make_block", 1), (3, "m.forward", 2), (4, "m.forward", 3)):
        for kind in ("pre", "post"):
            time_ns += 10
            record = {"type": f"function_call ({kind})", "func_call_id": call, "time": time_ns, "parent_id": None,
                      "function": function, "process_id": 0, "thread_id": 0,
                      "meta_vars": {"step": step, "stage": "evaluation"}}  # fmt: skip
            record.update({"obj_id": None, "is_bound_method": False, "args": {}, "kwargs": {}, "proxy_obj_names": []}
                          if kind == "pre" else {"return_values": None})  # fmt: skip
            lines.append(json.dumps(record))
    lines.append(json.dumps({"time": time_ns + 10, "end_of_trace": 1}))
    (folder / "trace_API_all.log").write_text("\n".join(lines) + "\n")


def test_a_lead_violation_names_the_call_that_was_not_followed(venv: Path, tmp_path: Path):
    """'forward() always precedes make_block()' broken after step 2's forward is seen at step 3's: `--check` names
    both calls, so the program's line of the call where make_block() was missing is shown too."""
    (tmp_path / "run").mkdir()
    _lead_trace(tmp_path / "run")
    clause = {"type": "constant", "prop_name": "meta_vars.stage", "additional_path": "None", "prop_dtype": "str",
              "values": ["evaluation"]}  # fmt: skip
    invariant = {"text_description": "forward() always precedes make_block()", "relation": "FunctionLeadRelation",
                 "params": [{"param_type": "APIParam", "api_full_name": name} for name in ("m.forward", "m.make_block")],
                 "precondition": {"func_lead": {"inverted": False, "preconditions": [{"clauses": [clause]}]}},
                 "num_positive_examples": 1, "num_negative_examples": 1}  # fmt: skip
    (tmp_path / "invariants.json").write_text(json.dumps(invariant) + "\n")
    proc = subprocess.run([str(venv / "bin" / "python"), str(ROOT / "traincheck_rewrite" / "onlinecheck_driver.py"), "-f",
                           "run", "-i", "invariants.json", "-o", "out", "--exit-on-idle"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:]
    violations = _failed_results(tmp_path / "out" / "failed.log")
    assert [[(r["func_call_id"], r["meta_vars.step"]) for r in v["trace"]] for v in violations] == [[(3, 2), (4, 3)]]

