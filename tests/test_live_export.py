"""The plain traces `tc-rewrite` makes while the program runs (trace/live.py): the same bytes as the export after the
run, never from bytes a writer may still rewrite, and the export after the run whenever an assumption fails."""

from __future__ import annotations

import json
import time
from pathlib import Path

import orjson
import pytest
import zstandard

from helpers import FIXTURES, run_tc
from traincheck_rewrite.runtime.writer import TraceWriter, held_marker
from traincheck_rewrite.trace import read_records
from traincheck_rewrite.trace.export import export_traincheck
from traincheck_rewrite.trace.live import LiveExport

PRE, POST = "function_call (pre)", "function_call (post)"


def _plain_files(folder: Path) -> dict[str, bytes]:
    """The plain trace files' records, byte for byte, without the progress marks of the live export (checked here:
    only `time`, increasing, and the file's last line the end mark)."""
    files = {}
    for path in sorted(folder.glob("trace_*.log")):
        lines = path.read_bytes().splitlines(keepends=True)
        marks = [orjson.loads(line) for line in lines if b'"type"' not in line]
        assert all(set(m) <= {"time", "end_of_trace"} for m in marks), marks
        if marks:
            assert marks[-1].get("end_of_trace") and orjson.loads(lines[-1]) == marks[-1], path.name
            assert [m["time"] for m in marks] == sorted(m["time"] for m in marks)
        files[path.name] = b"".join(line for line in lines if b'"type"' in line)
    return files


def _by_thread(files: dict[str, bytes]) -> dict:
    """The plain files with the API file's lines split by process and thread, each in its order: the live export
    writes what each look at the trace finds in step order, the export after the run a thread's block of records
    where its outermost call closes (a call left open by a killed process is then dropped)."""
    out = {name: data for name, data in files.items() if name != "trace_API_all.log"}
    for line in files.get("trace_API_all.log", b"").splitlines(keepends=True):
        record = orjson.loads(line)
        key = ("trace_API_all.log", record["process_id"], record["thread_id"])
        out[key] = out.get(key, b"") + line
    return out


@pytest.mark.parametrize("fixture", ["mlp", "threads", "dataloader"])
def test_plain_traces_made_while_the_program_runs_are_the_export_after_it(fixture: str, tmp_path: Path):
    result = run_tc([str(FIXTURES / fixture / "config.yaml")], tmp_path / "run", cwd=FIXTURES / fixture)
    assert result.returncode == 0, result.stderr
    plain = json.loads((result.run_dir / "run.json").read_text())["plain_traces"]
    assert plain["written"] and plain["while_running"], plain
    stats = export_traincheck(result.run_dir, tmp_path / "after")
    live = _by_thread(_plain_files(result.run_dir))
    assert live == _by_thread(_plain_files(tmp_path / "after")) and len(live) >= 2, sorted(live, key=str)
    assert plain["records"] == stats.records and plain["files"] == stats.files
    assert not list((result.run_dir).glob(".plain_traces*"))  # nothing staged is left behind


def test_a_killed_programs_torn_files_are_read_to_what_seal_keeps(tmp_path: Path):
    """SIGKILL leaves the file torn; the live export reads it to its last whole line, which is what seal() keeps and
    the export after the run reads."""
    result = run_tc([str(FIXTURES / "crash_step7" / "config.yaml")], tmp_path / "run", cwd=FIXTURES / "crash_step7")
    assert result.returncode != 0
    info = json.loads((result.run_dir / "run.json").read_text())
    assert info["records"]["sealed_files"] >= 1
    assert info["plain_traces"]["written"] and info["plain_traces"]["while_running"], info["plain_traces"]
    export_traincheck(result.run_dir, tmp_path / "after")
    assert _by_thread(_plain_files(result.run_dir)) == _by_thread(_plain_files(tmp_path / "after"))


def _call(n: int, step: int) -> list[tuple]:
    """A pre and a post record of one call, as the runtime keeps them (runtime/encode.py)."""
    from traincheck_rewrite.runtime.encode import POST as POST_KIND
    from traincheck_rewrite.runtime.encode import PRE as PRE_KIND

    info = ("torch.f", False, False, 0, False, True, True, '"torch.f"', "false", True, False)
    meta = {"step": step, "stage": "init"}
    return [(PRE_KIND, n, time.monotonic_ns(), meta, info, 1, None, None, (), None, ()),
            (POST_KIND, n, time.monotonic_ns(), meta, info, None, '{"NoneType":null}')]  # fmt: skip


def test_the_follower_never_reads_what_a_held_writer_may_still_rewrite(tmp_path: Path):
    """A thread's records held until the training loop is known are written, then cut off and written again
    relabelled: the follower must export only the relabelled ones."""
    traces = tmp_path / "run" / "traces"
    traces.mkdir(parents=True)
    writer = TraceWriter(str(traces), "API", 7, 1)
    live = LiveExport(tmp_path / "run")
    live.start()
    writer.records += _call(1, 0)
    writer.flush()
    writer.hold()
    assert Path(held_marker(writer.path)).read_text() == str(writer.hold_offset)
    since = time.monotonic_ns()
    writer.records += _call(2, 0) + _call(3, 0)
    writer.flush()  # written, and still held: these bytes will be cut off
    assert live.poll()
    assert writer.release(since) == 4
    assert not Path(held_marker(writer.path)).exists()
    writer.records += _call(4, 1)
    writer.close()
    stats = live.finish()
    assert stats is not None, live.failed
    lines = [orjson.loads(line) for line in _plain_files(tmp_path / "run")["trace_API_all.log"].splitlines()]
    assert [(r["func_call_id"] % 10**9, r["meta_vars"]["step"], r["meta_vars"]["stage"]) for r in lines if r["type"] == PRE] == [
        (1, 0, "init"), (2, 1, "training"), (3, 1, "training"), (4, 1, "init")]  # fmt: skip
    assert len(lines) == stats.records == len(list(read_records(tmp_path / "run")))


def _write(traces: Path, name: str, pid: int, t: int) -> None:
    records = [{"type": PRE, "func_call_id": pid * 10**9 + 1, "function": "torch.f", "time": t, "process_id": pid,
                "thread_id": 1, "meta_vars": {"step": 0}, "parent_id": None, "args": {}, "kwargs": {}},
               {"type": POST, "func_call_id": pid * 10**9 + 1, "function": "torch.f", "time": t + 1, "process_id": pid,
                "thread_id": 1, "meta_vars": {"step": 0}, "parent_id": None, "return_values": {"NoneType": None}}]  # fmt: skip
    (traces / name).write_bytes(zstandard.ZstdCompressor().compress(b"".join(orjson.dumps(r) + b"\n" for r in records)))


def test_a_guessed_identity_that_the_whole_trace_contradicts_gives_the_export_after_the_run(tmp_path: Path):
    """A process whose first record comes to light after another's, but is older, takes the first process id: the
    file exported under the other guess is not kept."""
    traces = tmp_path / "run" / "traces"
    traces.mkdir(parents=True)
    live = LiveExport(tmp_path / "run")
    live.start()
    _write(traces, "trace_API_500_1.log.zst", 500, 20)
    assert live.poll()  # exported as process 0
    _write(traces, "trace_API_900_1.log.zst", 900, 10)  # older: process 0 after all
    assert live.finish() is None and "changed" in live.failed
    assert not list((tmp_path / "run").glob("trace_*.log")) and not list((tmp_path / "run").glob(".plain_traces*"))


def test_the_jobs_api_records_go_into_one_file_and_a_held_file_holds_back_younger_ones(monkeypatch, tmp_path: Path):
    """All processes' API records go into one file in step order (export.py: the engine reads a function's calls in
    their order in what it reads); records younger than what a held writer may still rewrite wait for it."""
    import traincheck_rewrite.trace.live as live_module

    monkeypatch.setattr(live_module, "HORIZON_NS", 0)  # every record written is old enough to export
    traces = tmp_path / "run" / "traces"
    traces.mkdir(parents=True)
    live = LiveExport(tmp_path / "run")
    held = TraceWriter(str(traces), "API", 7, 1)
    held.records += _call(1, 0)
    held.flush()
    held.hold()
    since = time.monotonic_ns()
    held.records += _call(2, 0)
    held.flush()
    _write(traces, "trace_API_8_1.log.zst", 8, time.monotonic_ns())  # younger than the held call 2
    assert live.poll()
    exported = [orjson.loads(line) for line in (tmp_path / "run" / "trace_API_all.log").read_bytes().splitlines()]
    assert [(r["process_id"], r["func_call_id"] % 10**9) for r in exported if r.get("type") == PRE] == [(0, 1)]
    held.release(since)
    held.close()
    assert live.finish() is not None, live.failed
    lines = [orjson.loads(line) for line in _plain_files(tmp_path / "run")["trace_API_all.log"].splitlines()]
    assert [(r["process_id"], r["func_call_id"] % 10**9, r["meta_vars"]["step"]) for r in lines if r["type"] == PRE] == [
        (0, 1, 0), (1, 1, 0), (0, 2, 1)]  # call 2 was relabelled to the first training step when the hold ended


def test_at_the_end_a_file_with_no_whole_record_holds_nothing_back(tmp_path: Path):
    """A writer killed inside its first line leaves a file with bytes and no record: while the program runs the API
    file waits for it (its first record could be older than any), at the end it must not."""
    traces = tmp_path / "run" / "traces"
    traces.mkdir(parents=True)
    _write(traces, "trace_API_500_1.log.zst", 500, 20)
    torn = zstandard.ZstdCompressor().compress(b'{"type": "function_call (pre)", "func_call_id"')
    (traces / "trace_API_900_1.log.zst").write_bytes(torn[: len(torn) // 2])
    live = LiveExport(tmp_path / "run")
    assert live.poll() and not (tmp_path / "run" / "trace_API_all.log").exists()
    assert live.finish() is not None, live.failed
    lines = [orjson.loads(line) for line in _plain_files(tmp_path / "run")["trace_API_all.log"].splitlines()]
    assert [(r["type"], r["func_call_id"]) for r in lines] == [(PRE, 1), (POST, 1)]
