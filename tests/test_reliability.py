"""Faults in the program and in the tool, processes, hostile input, security: the run behaves as without the tool
and the trace survives. (docs/reliability.md maps each guarantee to its test.)"""

from __future__ import annotations

import json
import os
import resource
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FIXTURES, api_records, run_plain, run_tc
from traincheck_rewrite.trace import ReadStats, read_records

PROC = FIXTURES / "processes"


def _popen_tc(args: list[str], out: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "traincheck_rewrite", "--output-dir", str(out), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw,
    )


def _kill_tree(pid: int) -> None:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    for child in children.read_text().split() if children.exists() else []:
        _kill_tree(int(child))
    os.kill(pid, signal.SIGKILL)


def test_ctrl_c_stops_the_program_as_it_would_and_keeps_the_trace(tmp_path: Path):
    # as from a terminal: a background job (`pytest &`) would start with SIGINT ignored, and so would the program
    proc = _popen_tc(["--pyscript", str(PROC / "interrupt.py")], tmp_path, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    except (AssertionError, subprocess.TimeoutExpired):
        _kill_tree(proc.pid)  # the program would otherwise run on for 20 minutes after the test
        raise AssertionError(f"tc-rewrite did not stop on SIGINT; its stderr:\n{proc.stderr.read()[-3000:]}")
    stderr = proc.stderr.read()
    assert proc.returncode == 128 + signal.SIGINT, stderr
    assert "KeyboardInterrupt" in stderr  # the program's own traceback
    run_dir = tmp_path
    stats = ReadStats()
    adds = [r for r in read_records(run_dir, stats=stats) if r["function"] == "torch.Tensor.add_"]
    assert len(adds) >= 2 * 21 and stats.truncated_files == []
    assert json.loads((run_dir / "run.json").read_text())["exit_code"] == 130


def test_os_exit_keeps_its_exit_code_and_its_records(tmp_path: Path):
    traced = run_tc(["--pyscript", str(PROC / "os_exit.py")], tmp_path)
    assert traced.returncode == 5 and traced.stdout == "sum 21.0\n"
    adds = [r for r in api_records(traced.run_dir) if r["function"] == "torch.add"]
    assert len(adds) == 8  # written by os._exit itself, which skips atexit
    assert json.loads((traced.run_dir / "run.json").read_text())["records"]["sealed_files"] == 0  # and closed


def _limit_file_size(limit: int):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_a_trace_that_cannot_be_written_never_harms_the_training(tmp_path: Path):
    fixture = FIXTURES / "mlp"
    plain = run_plain([sys.executable, "train.py"], cwd=fixture)
    # The session's rewrite cache warm first (as every run after a program's first finds it): the limit is on the
    # trace, and a cold cache's entries of the rewritten libraries would be refused too, with a warning of their own.
    assert run_tc([str(fixture / "config.yaml")], tmp_path / "warm", cwd=fixture).returncode == 0
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "traincheck_rewrite", str(fixture / "config.yaml"), "--output-dir", str(out)],
        cwd=fixture, capture_output=True, text=True, timeout=300, preexec_fn=_limit_file_size(4096),  # the trace: ~7 KB
    )
    assert proc.returncode == 0 and proc.stdout == plain.stdout
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("traincheck_rewrite: warning:")]
    assert len(warnings) == 1 and "cannot be written" in warnings[0]
    run_dir = out
    info = json.loads((run_dir / "run.json").read_text())
    assert info["trace_complete"] is False and info["exit_code"] == 0


def test_a_writer_that_fails_mid_run_keeps_what_it_wrote(tmp_path: Path):
    code = f"""
import os, resource
from traincheck_rewrite.runtime.writer import TraceWriter
w = TraceWriter({str(tmp_path)!r}, "API", 1, 2)
for i in range(100):
    w.append({{"type": "x", "time": i, "pad": "p" * 200}}, 0)
w.flush()
size = os.path.getsize(w.path)
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 10, size + 10))
for i in range(100, 20000):
    w.append({{"type": "x", "time": i, "pad": os.urandom(100).hex()}}, 0)
w.close()
print("program went on")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "program went on\n", proc.stderr
    assert proc.stderr.count("traincheck_rewrite: warning:") == 1
    assert (tmp_path / "INCOMPLETE").exists()
    times = [r["time"] for r in read_records(tmp_path)]
    assert times[:100] == list(range(100))


def test_dataloader_workers_started_with_spawn_trace_themselves(tmp_path: Path):
    plain = run_plain([sys.executable, "spawn_loader.py"], cwd=PROC)
    traced = run_tc(["--pyscript", str(PROC / "spawn_loader.py")], tmp_path, cwd=PROC)
    assert traced.returncode == 0 and traced.stdout == plain.stdout, traced.stderr
    records = api_records(traced.run_dir)
    full = {r["process_id"] for r in records if r["function"] == "torch.full"}
    assert len(full) == 2  # two workers, each with its own files
    assert all(r["meta_vars"].get("worker_id") in (0, 1) for r in records if r["function"] == "torch.full")


def test_multiprocessing_in_the_script(tmp_path: Path):
    plain = run_plain([sys.executable, "pool.py"], cwd=PROC)
    traced = run_tc(["--pyscript", str(PROC / "pool.py")], tmp_path, cwd=PROC)
    assert traced.returncode == 0 and traced.stdout == plain.stdout, traced.stderr
    records = api_records(traced.run_dir)
    pids = {r["process_id"] for r in records if r["function"] == "torch.arange"}
    assert len(pids) >= 2 and len([r for r in records if r["function"] == "torch.arange"]) == 2 * 5
    names = [p.name for p in (traced.run_dir / "traces").iterdir()]
    assert len(names) == len(set(names)) and all(n.startswith("trace_") for n in names)


def test_no_environment_value_lands_in_the_run_folder(tmp_path: Path):
    secret = "s3cr3t-value-7f1c"
    os.environ["TC_TEST_SECRET_TOKEN"] = secret
    try:
        traced = run_tc([str(FIXTURES / "mlp" / "config.yaml")], tmp_path, cwd=FIXTURES / "mlp")
    finally:
        del os.environ["TC_TEST_SECRET_TOKEN"]
    assert traced.returncode == 0
    for path in traced.run_dir.rglob("*"):
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_follow_the_users_umask(tmp_path: Path, umask: int):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "traincheck_rewrite", str(FIXTURES / "mlp" / "config.yaml"), "--output-dir", str(out)],
        cwd=FIXTURES / "mlp", capture_output=True, timeout=300, preexec_fn=lambda: os.umask(umask),
    )
    assert proc.returncode == 0
    run_dir = out
    for path in [run_dir, *run_dir.rglob("*")]:
        if path.is_symlink():  # no mode of its own: RUN/traincheck_rewrite, links kept by copy_all_files
            continue
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & umask == 0, (path, oct(mode))
        assert not mode & stat.S_IWOTH


def test_arguments_reach_the_script_verbatim_and_no_shell_sees_them(tmp_path: Path):
    script = tmp_path / "echo_args.py"
    script.write_text("import sys\nprint(sys.argv[1:])\n")
    marker = tmp_path / "pwned"
    hostile = [f"; touch {marker}", "$(touch x)", "`id`", "a b", "*", "--"]
    traced = run_tc(["--pyscript", str(script), "--", *hostile], tmp_path / "out", cwd=tmp_path)
    assert traced.returncode == 0 and traced.stdout == f"{hostile!r}\n"
    assert not marker.exists()


HOSTILE_SCRIPTS = [
    ("binary.py", bytes(range(256)) * 4, 2, "binary.py"),
    ("not_utf8.py", b"x = '\xff\xfe'\n", 2, "not_utf8.py"),
    ("tabs_spaces.py", b"if True:\n\tx = 1\n        y = 2\n", 2, "tabs_spaces.py"),
    ("empty.py", b"", 0, None),
    ("only_comment.py", b"# nothing here\n", 0, None),
    ("nul_byte.py", b"x = 1\x00\n", 2, "nul_byte.py"),
]


@pytest.mark.parametrize("name,content,code,named", HOSTILE_SCRIPTS, ids=[h[0] for h in HOSTILE_SCRIPTS])
def test_hostile_scripts_are_refused_in_one_line_or_run(tmp_path: Path, name: str, content: bytes, code: int, named):
    (tmp_path / name).write_bytes(content)
    traced = run_tc(["--pyscript", str(tmp_path / name)], tmp_path / "out", cwd=tmp_path)
    assert traced.returncode == code, traced.stderr
    if code == 2:
        lines = traced.stderr.splitlines()
        assert len(lines) == 1 and named in lines[0] and lines[0].startswith("tc-rewrite: error:")
        assert not (tmp_path / "out").exists()


def test_a_pyscript_inside_an_earlier_run_folder_makes_a_new_run(tmp_path: Path):
    first = run_tc([str(FIXTURES / "mlp" / "config.yaml")], tmp_path / "out", cwd=FIXTURES / "mlp")
    again = run_tc(["--pyscript", str(first.run_dir / "train.py")], tmp_path / "out", cwd=FIXTURES / "mlp")
    assert again.returncode == 0 and again.stdout == first.stdout
    assert again.run_dir != first.run_dir
    assert len(api_records(again.run_dir)) == len(api_records(first.run_dir))
    assert (again.run_dir / "train.py").read_text() == (first.run_dir / "train.py").read_text()  # not instrumented twice


def test_a_huge_config_value_is_refused_cleanly(tmp_path: Path):
    (tmp_path / "train.py").write_text("print(1)\n")
    (tmp_path / "cfg.yaml").write_text("pyscript: train.py\nmodels_to_track: [" + ", ".join(f"m{i}" for i in range(50000)) + "]\nbogus: 1\n")
    proc = subprocess.run([sys.executable, "-m", "traincheck_rewrite", "cfg.yaml"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and "unknown key 'bogus'" in proc.stderr


def test_an_exception_closes_every_open_call_with_an_exception_record(tmp_path: Path):
    script = tmp_path / "boom.py"
    script.write_text(
        "import torch\nimport torch.nn as nn\nimport torch.nn.functional as F\n"
        "class Net(nn.Module):\n"
        "    def forward(self, x):\n"
        "        return F.linear(x, torch.ones(3, 5))\n"
        "model = Net()\n"
        "for step in range(3):\n"
        "    model(torch.ones(2, 4 if step == 2 else 5))\n"
    )
    plain = run_plain([sys.executable, str(script)], cwd=tmp_path)
    traced = run_tc(["--pyscript", str(script)], tmp_path / "out", cwd=tmp_path)
    assert traced.returncode == plain.returncode == 1
    assert traced.program_stderr.splitlines()[-1] == plain.stderr.splitlines()[-1]
    records = api_records(traced.run_dir)
    failed = [r for r in records if r["type"] == "function_call (post) (exception)"]
    assert [r["function"] for r in failed] == ["torch._C._nn.linear", "__main__.Net.forward"]
    assert all(r["exception"] == "RuntimeError" and "shapes" in r["exception_msg"] for r in failed)
    pre = {r["func_call_id"] for r in records if r["type"] == "function_call (pre)"}
    assert pre == {r["func_call_id"] for r in records if r["type"] != "function_call (pre)"}


def test_copy_all_files_refuses_a_tree_that_would_overwrite_the_run_folders_own_files(tmp_path: Path):
    (tmp_path / "train.py").write_text("print(1)\n")
    (tmp_path / "run.json").write_text("{}")
    traced = run_tc(["--pyscript", str(tmp_path / "train.py"), "--copy-all-files"], tmp_path / "out", cwd=tmp_path)
    assert traced.returncode == 2 and len(traced.stderr.splitlines()) == 1
    assert "run.json" in traced.stderr and "copy_all_files" in traced.stderr
    assert not (tmp_path / "out").exists()


def test_a_shscript_that_never_names_the_pyscript_is_refused(tmp_path: Path):
    (tmp_path / "train.py").write_text("print(1)\n")
    (tmp_path / "run.sh").write_text("python other.py\n")
    (tmp_path / "cfg.yaml").write_text("pyscript: train.py\nshscript: run.sh\n")
    traced = run_tc([str(tmp_path / "cfg.yaml")], tmp_path / "out", cwd=tmp_path)
    assert traced.returncode == 2 and len(traced.stderr.splitlines()) == 1
    assert "no word names the pyscript train.py" in traced.stderr
