"""The trace reader and sealer on real zstd files: several frames, torn frames, spill files, plain TrainCheck logs."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
import zstandard

from traincheck_rewrite.runtime.encode import DICT
from traincheck_rewrite.runtime.writer import TraceWriter
from traincheck_rewrite.trace import ReadStats, read_records
from traincheck_rewrite.trace.recover import seal
from traincheck_rewrite.trace.summary import summarize


def rec(i: int, kind: str = "function_call (pre)", **extra) -> dict:
    return {"type": kind, "func_call_id": i, "time": 1000 + i, "process_id": 1, "thread_id": 2, "meta_vars": {"step": i // 10}, **extra}


def lines(records) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def frame(records) -> bytes:
    return zstandard.ZstdCompressor(level=1).compress(lines(records))


@pytest.fixture()
def traces(tmp_path: Path) -> Path:
    folder = tmp_path / "traces"
    folder.mkdir()
    return folder


def test_reads_every_frame_of_a_multi_frame_file(traces: Path):
    (traces / "trace_API_1_2.log.zst").write_bytes(frame([rec(0), rec(1)]) + frame([rec(2)]) + frame([rec(3)]))
    stats = ReadStats()
    got = [r["func_call_id"] for r in read_records(traces.parent, stats=stats)]
    assert got == [0, 1, 2, 3] and stats.truncated_files == [] and stats.files == 1


@pytest.mark.parametrize("cut", [1, 3, 9])
def test_torn_last_frame_keeps_complete_blocks_and_is_counted(traces: Path, cut: int):
    comp = zstandard.ZstdCompressor(level=1).compressobj()
    data = frame([rec(0)]) + comp.compress(lines([rec(1), rec(2)])) + comp.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    data += comp.compress(lines([rec(3)])) + comp.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    (traces / "trace_API_1_2.log.zst").write_bytes(data[:-cut])  # the last block is cut
    stats = ReadStats()
    got = [r["func_call_id"] for r in read_records(traces, stats=stats, chunk_size=7)]
    assert got == [0, 1, 2]
    assert stats.truncated_files == ["trace_API_1_2.log.zst"] and stats.bad_lines == 0


def test_lines_split_across_read_chunks_and_bad_lines(traces: Path):
    good = lines([rec(i, note="x" * 50) for i in range(20)])
    (traces / "trace_API_1_2.log.zst").write_bytes(zstandard.ZstdCompressor().compress(good + b"{not json\n" + lines([rec(20)])))
    stats = ReadStats()
    got = [r["func_call_id"] for r in read_records(traces, stats=stats, chunk_size=5)]
    assert got == list(range(21)) and stats.bad_lines == 1


def test_empty_files_and_decompressed_traincheck_logs(traces: Path):
    (traces / "trace_API_1_2.log.zst").write_bytes(b"")
    (traces / "trace_VAR_1_2.log").write_bytes(lines([rec(7, "state_change", var_name="model.0.weight")]))
    (traces / "unrelated.txt").write_text("ignored")
    stats = ReadStats()
    got = list(read_records(traces, stats=stats))
    assert [r["func_call_id"] for r in got] == [7] and stats.truncated_files == [] and stats.files == 2


def test_written_batches_survive_without_close_and_seal_closes_the_frame(traces: Path):
    writer = TraceWriter(str(traces), "API", 1, 2)
    for i in range(5):
        writer.append(rec(i), 0)
    writer.flush()  # records 0-4 compressed as one block of a frame left open
    for i in range(5, 8):
        writer.append(rec(i), 0)
    writer.flush()  # a second block; the process "dies" here
    assert sorted(p.name for p in traces.iterdir()) == ["trace_API_1_2.log.zst"]
    stats = ReadStats()
    assert [r["func_call_id"] for r in read_records(traces, stats=stats)] == list(range(8))
    assert stats.truncated_files == ["trace_API_1_2.log.zst"]
    assert seal(traces.parent) == {"sealed_files": 1, "recovered_records": 0}
    stats = ReadStats()
    assert [r["func_call_id"] for r in read_records(traces, stats=stats)] == list(range(8))
    assert stats.truncated_files == []


def test_held_records_are_written_again_relabelled_in_place(traces: Path):
    """What the step counter holds is written at once (a kill keeps it), and rewritten when the loop becomes known."""
    writer = TraceWriter(str(traces), "API", 1, 2)
    writer.records.append((DICT, None, 5, {"step": 0, "stage": "init"}, {"type": "state_change", "var_name": "before"}))
    writer.hold()
    for t, name in ((10, "outer"), (20, "first iteration"), (30, "first iteration, later")):
        writer.records.append((DICT, None, t, {"step": 0, "stage": "init"}, {"type": "state_change", "var_name": name}))
        writer.flush()
    assert [r["meta_vars"]["step"] for r in read_records(traces)] == [0, 0, 0, 0]  # written, provisionally
    assert writer.release(since=20) == 3
    writer.close()
    got = [(r["var_name"], r["meta_vars"]) for r in read_records(traces)]
    assert got == [
        ("before", {"step": 0, "stage": "init"}), ("outer", {"step": 0, "stage": "init"}),
        ("first iteration", {"step": 1, "stage": "training"}), ("first iteration, later", {"step": 1, "stage": "training"}),
    ]  # fmt: skip


def test_seal_drops_spill_records_already_compressed(traces: Path):
    """A kill between writing a block and clearing the spill must not duplicate records."""
    (traces / "trace_API_1_2.log.zst").write_bytes(frame([rec(0), rec(1)]))
    (traces / "spill_API_1_2.jsonl").write_bytes(lines([rec(1), rec(2)]) + b'{"partial' + b"\0" * 100)
    assert [r["func_call_id"] for r in read_records(traces)] == [0, 1, 2]
    seal(traces)
    assert [r["func_call_id"] for r in read_records(traces)] == [0, 1, 2]


def test_writer_close_leaves_one_clean_file(traces: Path):
    writer = TraceWriter(str(traces), "API", 1, 2)
    for i in range(3):
        writer.append(rec(i), 0)
    writer.close()
    assert [p.name for p in traces.iterdir()] == ["trace_API_1_2.log.zst"]
    stats = ReadStats()
    assert len(list(read_records(traces, stats=stats))) == 3 and stats.truncated_files == []


def test_summary_counts(traces: Path, tmp_path: Path):
    records = [
        rec(1), rec(1, "function_call (post)", function="torch.add"),
        rec(2), rec(2, "function_call (post) (exception)", function="torch.mm"),
        rec(3),  # left open
        rec(40, "state_change", var_name="model.w", meta_vars={"step": 4, "stage": "training"}),
    ]
    (traces / "trace_API_1_2.log.zst").write_bytes(frame(records))
    (tmp_path / "run.json").write_text(json.dumps({"exit_code": 3}))
    s = summarize(tmp_path)
    assert s["api_calls"] == 2 and s["functions"] == {"torch.add": 1, "torch.mm": 1}
    assert s["exceptions"] == 1 and s["open_calls"] == 1 and s["state_changes"] == 1 and s["variables"] == 1
    assert s["max_step"] == 4 and s["stages"] == {"init": 5, "training": 1} and s["exit_code"] == 3
    assert s["processes"] == 1 and s["threads"] == 1 and s["truncated_files"] == 0


def test_seal_keeps_the_frames_after_a_damaged_one(traces: Path):
    from traincheck_rewrite.run import count_records

    f1, f2, f3 = frame([rec(i) for i in range(10)]), frame([rec(i) for i in range(10, 20)]), frame([rec(i) for i in range(20, 30)])
    (traces / "trace_API_1_2.log.zst").write_bytes(f1 + f2[: len(f2) // 2] + f3)
    assert count_records(traces) == {"api": 20, "state": 0, "files": 1, "truncated_files": 1}
    assert seal(traces) == {"sealed_files": 1, "recovered_records": 0}
    stats = ReadStats()
    got = [r["func_call_id"] for r in read_records(traces, stats=stats)]
    assert got == list(range(10)) + list(range(20, 30)) and stats.truncated_files == []


def test_seal_leaves_a_file_it_cannot_rewrite_as_the_reader_reads_it(traces: Path):
    """A file size limit (or a full disk) stops the rewrite: the torn file stays byte for byte, nothing half-written
    is left beside it, the run goes on, and the count says so."""
    import subprocess
    import sys

    f1, f2, f3 = frame([rec(i) for i in range(10)]), frame([rec(i) for i in range(10, 20)]), frame([rec(i) for i in range(20, 30)])
    torn = f1 + f2[: len(f2) // 2] + f3
    (traces / "trace_API_1_2.log.zst").write_bytes(torn)
    code = ("import json, resource, sys; from traincheck_rewrite.trace.recover import seal; "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64)); print(json.dumps(seal(sys.argv[1])))")
    proc = subprocess.run([sys.executable, "-c", code, str(traces)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"sealed_files": 0, "recovered_records": 0, "unsealed_files": 1}
    assert sorted(p.name for p in traces.iterdir()) == ["trace_API_1_2.log.zst"]
    assert (traces / "trace_API_1_2.log.zst").read_bytes() == torn
    assert [r["func_call_id"] for r in read_records(traces)] == list(range(10)) + list(range(20, 30))


def test_seal_streams_a_trace_much_larger_than_what_it_holds_in_memory(traces: Path):
    import tracemalloc

    line = orjson.dumps(rec(1, note="x" * 100)) + b"\n"
    per_frame = (8 << 20) // len(line)  # about 8 MiB of JSON a frame
    chunk = zstandard.ZstdCompressor(level=1).compress(line * per_frame)
    torn = zstandard.ZstdCompressor(level=1).compress(line * 1000)[:-5]
    (traces / "trace_API_1_2.log.zst").write_bytes(chunk * 40 + torn)  # 320 MiB of JSON, the last frame torn
    before = sum(1 for _ in read_records(traces))
    assert before >= 40 * per_frame
    tracemalloc.start()
    try:
        assert seal(traces) == {"sealed_files": 1, "recovered_records": 0}
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 << 20, peak  # a few frames' worth, not the file
    stats = ReadStats()
    assert sum(1 for _ in read_records(traces, stats=stats)) == before
    assert stats.truncated_files == []
