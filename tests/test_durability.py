"""What survives a hard end: SIGKILL mid-run (nothing before the training step in progress, at most the last half
second outside training), SIGTERM, KeyboardInterrupt; and the generated script run directly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers import FIXTURES, api_records, run_plain, run_tc
from traincheck_rewrite.trace import ReadStats, read_records


def _steps_completed(records: list[dict]) -> int:
    return sum(1 for r in records if r["type"] == "function_call (post)" and r["function"] == "torch.optim.sgd.SGD.step")


def test_sigkill_at_step_7_keeps_every_call_of_the_first_6_steps(tmp_path: Path):
    traced = run_tc([str(FIXTURES / "crash_step7" / "config.yaml")], tmp_path, cwd=FIXTURES / "crash_step7")
    assert traced.returncode == 128 + signal.SIGKILL
    assert traced.stdout.endswith("completed_steps 6\n")
    records = api_records(traced.run_dir)
    assert _steps_completed(records) == 6
    # the print after the 6th step's optimizer.step() called loss.item(): its records were in no flushed block
    items = [r for r in records if r["function"] == "torch.Tensor.item" and r["type"] == "function_call (post)"]
    assert len(items) == 6
    pre = {r["func_call_id"] for r in records if r["type"] == "function_call (pre)"}
    post = {r["func_call_id"] for r in records if r["type"] != "function_call (pre)"}
    assert pre == post  # no call left open


def test_a_killed_direct_run_is_readable_before_it_is_sealed(tmp_path: Path):
    """`python RUN/train.py` killed: read_records reads the compressed blocks and the spill file left behind."""
    only = run_tc(["--pyscript", str(FIXTURES / "crash_step7" / "train.py"), "--only-instr"], tmp_path)
    assert only.returncode == 0, only.stderr
    run_dir = only.run_dir
    proc = run_plain([sys.executable, str(run_dir / "train.py")], cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL
    names = sorted(p.name for p in (run_dir / "traces").iterdir())
    assert any(n.startswith("trace_API_") for n in names)
    stats = ReadStats()
    records = list(read_records(run_dir, stats=stats))
    assert _steps_completed(records) == 6
    items = [r for r in records if r["function"] == "torch.Tensor.item" and r["type"] == "function_call (post)"]
    assert len(items) == 6  # written when the 7th step began, before the kill
    assert stats.truncated_files == [n for n in names if n.startswith("trace_")]  # torn, and read all the same


def _kill_when_ready(script: Path, out: Path, wait_s: float) -> Path:
    """Run `script` under tc-rewrite, SIGKILL the program `wait_s` after it prints `ready`; the run folder."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "traincheck_rewrite", "--pyscript", str(script), "--output-dir", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout.readline() == "ready\n", proc.stderr.read()
        time.sleep(wait_s)
        (program,) = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
        os.kill(program, signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGKILL, proc.stderr.read()
    assert (out / "run.json").is_file()  # --output-dir is the run folder
    return out


def test_sigkill_outside_training_loses_at_most_the_last_half_second(tmp_path: Path):
    """Calls made in a loop before any training loop is known (records held for relabelling), then the program waits
    without making any: killed a second later, every call is in the trace, closed."""
    script = tmp_path / "warmup.py"
    script.write_text(
        "import time, torch\n"
        "x = torch.ones(3)\n"
        "for i in range(20):\n"
        "    x = torch.add(x, i)\n"
        "    if i == 19:  # still in the loop, which may yet turn out to be the training loop\n"
        "        print('ready', flush=True)\n"
        "        time.sleep(120)\n"
    )
    run_dir = _kill_when_ready(script, tmp_path / "out", 1.0)
    adds = [r for r in read_records(run_dir) if r["function"] == "torch.add"]
    assert len(adds) == 40 and {r["type"] for r in adds} == {"function_call (pre)", "function_call (post)"}


def test_sigkill_in_a_long_first_step_keeps_what_came_before_it(tmp_path: Path):
    """Calls before the training loop, then a first training step that waits: killed inside it, every call made before
    the step is in the trace."""
    script = tmp_path / "slow_step.py"
    script.write_text(
        "import time, torch\n"
        "w = torch.ones(3, requires_grad=True)\n"
        "opt = torch.optim.SGD([w], lr=0.1)\n"
        "x = torch.zeros(3)\n"
        "for i in range(10):\n"
        "    x = torch.sub(x, i)\n"
        "for step in range(3):\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(120)\n"
        "    (w * x).sum().backward()\n"
        "    opt.step()\n"
    )
    run_dir = _kill_when_ready(script, tmp_path / "out", 1.0)
    subs = [r for r in read_records(run_dir) if r["function"] == "torch.sub"]
    assert len(subs) == 20


def test_sigterm_to_tc_rewrite_stops_the_program_and_keeps_its_trace(tmp_path: Path):
    script = tmp_path / "loop.py"
    script.write_text(
        "import time, torch\n"
        "for i in range(10**6):\n"
        "    torch.ones(1).add_(i)\n"
        "    if i == 50:\n"
        "        print('ready', flush=True)\n"
        "    time.sleep(0.001)\n"
    )
    out = tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "traincheck_rewrite", "--pyscript", str(script), "--output-dir", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr.read()
    run_dir = out
    stats = ReadStats()
    records = list(read_records(run_dir, stats=stats))
    adds = [r for r in records if r["function"] == "torch.Tensor.add_" and r["type"] == "function_call (post)"]
    assert len(adds) >= 51
    assert stats.truncated_files == []  # the program's SIGTERM flush closed the frame


def test_keyboard_interrupt_closes_the_open_call_with_an_exception_record(tmp_path: Path):
    script = tmp_path / "interrupt.py"
    script.write_text(
        "import torch\n"
        "def hook(grad):\n"
        "    raise KeyboardInterrupt\n"
        "w = torch.ones(2, requires_grad=True)\n"
        "w.register_hook(hook)\n"
        "try:\n"
        "    w.sum().backward()\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted')\n"
    )
    traced = run_tc(["--pyscript", str(script)], tmp_path / "out")
    assert traced.returncode == 0 and traced.stdout == "interrupted\n", traced.stderr
    closing = [r for r in api_records(traced.run_dir) if r["function"] == "torch._tensor.Tensor.backward"]
    assert [r["type"] for r in closing] == ["function_call (pre)", "function_call (post) (exception)"]
    assert closing[1]["exception"] == "KeyboardInterrupt"


def test_generated_script_runs_directly_and_an_env_var_redirects_traces(tmp_path: Path):
    only = run_tc([str(FIXTURES / "mlp" / "config.yaml"), "--only-instr"], tmp_path / "out")
    run_dir = only.run_dir
    plain = run_plain([sys.executable, "train.py"], cwd=FIXTURES / "mlp")
    direct = run_plain([sys.executable, str(run_dir / "train.py")], cwd=tmp_path)
    assert direct.returncode == 0 and direct.stdout == plain.stdout
    assert len(api_records(run_dir)) > 100
    elsewhere = tmp_path / "elsewhere"
    redirected = run_plain(
        [sys.executable, str(run_dir / "train.py")], cwd=tmp_path, env_extra={"TC_REWRITE_TRACE_DIR": str(elsewhere)}
    )
    assert redirected.stdout == plain.stdout
    assert len(api_records(elsewhere)) == len(api_records(run_dir))


def test_recorder_failure_never_changes_the_program(tmp_path: Path):
    """An unwritable trace folder: one warning, the program's own output and exit code unchanged."""
    only = run_tc([str(FIXTURES / "mlp" / "config.yaml"), "--only-instr"], tmp_path / "out")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the trace folder should be")
    plain = run_plain([sys.executable, "train.py"], cwd=FIXTURES / "mlp")
    direct = run_plain(
        [sys.executable, str(only.run_dir / "train.py")], cwd=tmp_path,
        env_extra={"TC_REWRITE_TRACE_DIR": str(blocker / "traces")},
    )
    assert direct.returncode == 0 and direct.stdout == plain.stdout
    warnings = [line for line in direct.stderr.splitlines() if line.startswith("traincheck_rewrite: warning:")]
    assert len(warnings) == 1, direct.stderr


def test_program_output_keeps_any_bytes(tmp_path: Path):
    script = tmp_path / "bytes.py"
    script.write_text("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe raw\\n')\nsys.stderr.write('err line\\n')\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "traincheck_rewrite", "--pyscript", str(script), "--output-dir", str(out)],
        capture_output=True, timeout=120,
    )
    assert proc.returncode == 0
    assert proc.stdout == b"\xff\xfe raw\n"
    run_dir = out
    log = (run_dir / "program_output.txt").read_bytes()
    assert b"\xff\xfe raw\n" in log and b"err line\n" in log
