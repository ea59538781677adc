"""What a careless or hostile user does with the commands (issue 26): export over files and into a run folder's
records, SQL that reaches outside the run, links and loops in a copied tree, two runs on one folder at once, a
killed tc-rewrite, and a program that imports what the tool's own source folder holds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from helpers import ROOT, run_plain

TRAIN = """import torch
model = torch.nn.Linear(2, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(3):
    opt.zero_grad()
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
print("trained")
"""


def tc(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """`tc-rewrite ARGS` started from the project's root (so that it is this checkout's code that runs)."""
    return subprocess.run([sys.executable, "-m", "traincheck_rewrite", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess, *words: str) -> bool:
    lines = proc.stderr.splitlines()
    return proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("tc-rewrite: error: ") and all(
        w in lines[0] for w in words)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    project = tmp_path_factory.mktemp("project")
    (project / "train.py").write_text(TRAIN)
    made = tc("--pyscript", str(project / "train.py"), "--models-to-track", "model", "--output-dir", str(project / "run"))
    assert made.returncode == 0, made.stderr
    return project / "run"


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_never_writes_over_a_file_unasked_nor_into_a_run_folders_records(run: Path, tmp_path: Path):
    before = _snapshot(run)
    plain = next(run.glob("trace_API_*.log"))
    own_trace = next((run / "traces").glob("trace_API_*.log.zst"))
    for target, extra in [
        (run / "run.json", ["--force"]), (own_trace, ["--force"]), (plain, []), (run / "train.py", ["--force"]),
        (run / "trace_timeline.json", []),  # a new name TrainCheck's engine would read as a trace
    ]:
        proc = tc("trace", "export", str(run), "--format", "chrome", "--to", str(target), *extra)
        assert one_line_error(proc, str(target)), (target, proc.stderr)
    for fmt, target in [("traincheck", run / "traces" / "more"), ("parquet", run / "original_sources" / "tables"),
                        ("traincheck", run)]:
        proc = tc("trace", "export", str(run), "--format", fmt, "--to", str(target))
        assert one_line_error(proc, str(target)), (target, proc.stderr)
    made = tc("--pyscript", str(run / "train.py"), "--output-dir", str(run / "traces" / "again"), "--only-instr")
    assert one_line_error(made, "output_dir"), made.stderr
    in_place = tc("trace", "export", str(run), "--in-place")  # the plain traces are there already
    assert one_line_error(in_place, "already holds its plain traces"), in_place.stderr
    assert _snapshot(run) == before

    mine = tmp_path / "notes.py"
    mine.write_text("keep me\n")
    refused = tc("trace", "export", str(run), "--format", "chrome", "--to", str(mine))
    assert one_line_error(refused, str(mine), "--force") and mine.read_text() == "keep me\n", refused.stderr
    forced = tc("trace", "export", str(run), "--format", "chrome", "--to", str(mine), "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(mine.read_text())["traceEvents"]
    beside = tc("trace", "export", str(run), "--format", "chrome", "--to", str(run / "timeline.json"))
    assert beside.returncode == 0 and (run / "timeline.json").is_file(), beside.stderr  # a new file beside is fine
    (run / "timeline.json").unlink()


def test_query_reads_the_runs_tables_and_nothing_else(run: Path, tmp_path: Path):
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    written, attached = tmp_path / "elsewhere.csv", tmp_path / "other.db"
    for sql in [f"COPY (SELECT function FROM calls) TO '{written}'", f"ATTACH '{attached}' AS other",
                f"SELECT * FROM read_csv('{secret}')", "INSTALL httpfs", "LOAD httpfs",
                "SET enable_external_access = true", f"SELECT * FROM read_json('{run / 'run.json'}')"]:
        proc = tc("trace", "query", str(run), sql)
        assert one_line_error(proc, "trace query only reads the run's tables"), (sql, proc.stderr)
        assert proc.stdout == "" and "hunter2" not in proc.stderr
    assert not written.exists() and not attached.exists()
    counted = tc("trace", "query", str(run), "SELECT count(*) AS n FROM calls WHERE function LIKE '%SGD.step'", "--json")
    assert counted.returncode == 0 and json.loads(counted.stdout) == [{"n": 3}], counted.stderr


def test_copy_all_files_keeps_links_inside_the_tree_as_links(tmp_path: Path):
    project = tmp_path / "proj"
    (project / "raw" / "v2").mkdir(parents=True)
    (project / "raw" / "v2" / "x.txt").write_text("raw v2\n")
    (project / "shared_data").mkdir()
    (project / "shared_data" / "y.txt").write_text("shared\n")
    (project / "pkg").mkdir()
    (project / "data").symlink_to("raw/v2", target_is_directory=True)
    (project / "pkg" / "data").symlink_to("../shared_data", target_is_directory=True)
    (project / "latest.txt").symlink_to("raw/v2/x.txt")
    (project / "train.py").write_text(
        "from pathlib import Path\nimport torch\nhere = Path(__file__).parent\n"
        "print((here / 'data' / 'x.txt').read_text(), (here / 'pkg' / 'data' / 'y.txt').read_text(),"
        " (here / 'latest.txt').read_text(), torch.ones(1).sum().item())\n")
    plain = run_plain([sys.executable, "train.py"], cwd=project)
    assert plain.returncode == 0, plain.stderr
    run = tmp_path / "out"
    traced = tc("--pyscript", str(project / "train.py"), "--copy-all-files", "--output-dir", str(run))
    assert traced.returncode == 0 and traced.stdout == plain.stdout, traced.stderr
    assert os.readlink(run / "data") == "raw/v2" and os.readlink(run / "pkg" / "data") == "../shared_data"
    assert os.readlink(run / "latest.txt") == "raw/v2/x.txt"


def test_copy_all_files_refuses_a_symlink_loop_in_one_line_and_leaves_nothing(tmp_path: Path):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "train.py").write_text("print(1)\n")
    (project / "a").symlink_to("b")
    (project / "b").symlink_to("a")
    out = tmp_path / "out"
    proc = tc("--pyscript", str(project / "train.py"), "--copy-all-files", "--output-dir", str(out))
    assert one_line_error(proc, "symlink loop", str(project / "a")), proc.stderr
    assert not out.exists()


def test_two_runs_started_at_once_on_one_folder_one_is_refused_before_writing(tmp_path: Path):
    go, shared = tmp_path / "go", tmp_path / "shared"
    procs = []
    for name in ("first", "second"):
        script = tmp_path / f"{name}.py"  # new text: the rewrite is not in the cache, so each run takes a while
        script.write_text(f"# {uuid.uuid4()}\nimport torch\nprint('{name}', torch.ones(1).item())\n")
        code = ("import os, sys, time\nfrom traincheck_rewrite import cli, run, config\n"
                f"while not os.path.exists({str(go)!r}):\n    time.sleep(0.001)\n"
                f"cli.main(['--pyscript', {str(script)!r}, '--output-dir', {str(shared)!r}])\n")
        procs.append(subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    time.sleep(3)  # both started and waiting
    go.touch()
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    winner = next(i for i, (code, _, _) in enumerate(results) if code == 0)
    loser_err = results[1 - winner][2].splitlines()
    assert len(loser_err) == 1 and loser_err[0].startswith("tc-rewrite: error: output_dir:"), loser_err
    name = ("first", "second")[winner]
    assert (shared / "program_output.txt").read_text() == f"{name} 1.0\n"
    assert json.loads((shared / "run.json").read_text())["config"]["pyscript"].endswith(f"{name}.py")
    assert sorted(p.name for p in shared.glob("*.py")) == [f"{name}.py"]


def test_a_killed_tc_rewrite_leaves_a_folder_that_says_how_to_make_the_plain_traces(tmp_path: Path):
    (tmp_path / "train.py").write_text(
        "import os, sys, time\nimport torch\nfor _ in range(5):\n    torch.ones(2).sum()\n"
        "time.sleep(1.5)\nprint(os.getpid(), flush=True)\ntime.sleep(120)\n")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "traincheck_rewrite", "--pyscript", str(tmp_path / "train.py"),
                             "--output-dir", str(run)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        program = int(proc.stdout.readline())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
    os.kill(program, signal.SIGKILL)
    proc.wait(timeout=60)
    for path in run.glob("trace_*"):  # what the live export wrote before it was killed: whole lines
        assert all(json.loads(line) for line in path.read_text().splitlines()), path
    command = f"tc-rewrite trace export {run} --in-place"
    assert command in (run / "PLAIN_TRACES_NOT_WRITTEN.txt").read_text()
    summary = tc("trace", "summary", str(run))
    assert summary.returncode == 0 and "API calls (completed)" in summary.stdout
    assert summary.stderr.splitlines() == [
        f"tc-rewrite: note: {run} has no complete plain traces for TrainCheck's engine (tc-rewrite was stopped before "
        f"completing them, or is still running): '{command}' writes them"]
    made = tc("trace", "export", str(run), "--in-place")
    assert made.returncode == 0, made.stderr
    assert [p.name for p in run.glob("trace_API_*.log")] and not (run / "PLAIN_TRACES_NOT_WRITTEN.txt").exists()
    calls = [json.loads(line) for p in run.glob("trace_API_*.log") for line in p.read_text().splitlines()]
    assert sum(1 for r in calls if r.get("function") == "torch._VariableFunctionsClass.ones" and r["type"] == "function_call (post)") == 5
    assert tc("trace", "summary", str(run)).stderr == ""


def test_the_program_sees_the_plain_runs_sys_path_after_its_run_folder_and_nothing_of_the_tool(tmp_path: Path):
    project = tmp_path / "proj"
    project.mkdir()
    (project / "train.py").write_text(
        "import json, sys\nimport torch\nfound = {}\nfor name in ('tests', 'scripts'):\n"
        "    try:\n        __import__(name)\n        found[name] = True\n    except ImportError:\n"
        "        found[name] = False\nprint(json.dumps({'path': sys.path, 'found': found}))\n")
    plain = run_plain([sys.executable, "train.py"], cwd=project)
    assert plain.returncode == 0, plain.stderr
    run = tmp_path / "run"
    traced = tc("--pyscript", str(project / "train.py"), "--output-dir", str(run))  # started in the tool's folder
    assert traced.returncode == 0, traced.stderr
    seen, expected = json.loads(traced.stdout), json.loads(plain.stdout)
    assert seen["found"] == expected["found"]  # {"tests": False, "scripts": False} where no package ships those names
    assert seen["path"] == [str(run.resolve())] + expected["path"]
