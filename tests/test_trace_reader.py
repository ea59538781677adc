"""read_records on real zstd trace files built here by hand, following docs/trace-format.md: several frames, block
flushes, torn and damaged frames, empty files, several processes and threads, lines across read chunks, bad lines,
spill files, and folders of decompressed TrainCheck logs."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import zstandard

from traincheck_rewrite import trace
from traincheck_rewrite.trace import ReadStats, read_records
from traincheck_rewrite.trace.reader import MAGIC, decompressed_chunks

NAME = "trace_API_11_22.log.zst"


def rec(i: int, kind: str = "function_call (pre)", pid: int = 11, tid: int = 22, **extra) -> dict:
    r = {"type": kind, "time": 1_000 + i, "process_id": pid, "thread_id": tid, "meta_vars": {"step": i // 10}}
    if kind == "state_change":
        r.update(var_name=f"model.{i}.weight", var_type="torch.nn.Parameter", attributes={"data": i})
    else:
        r.update(func_call_id=pid * 10**9 + i, function="torch.add", note="x" * (i % 13))
    r.update(extra)
    return r


def lines(records) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def frame(records) -> bytes:
    return zstandard.ZstdCompressor(level=1).compress(lines(records))


def blocks(*groups) -> bytes:
    """One frame left open (as a killed writer leaves it): one block flush per group of records."""
    obj = zstandard.ZstdCompressor(level=1).compressobj()
    return b"".join(obj.compress(lines(g)) + obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK) for g in groups)


def ids(records) -> list[int]:
    return [r["time"] - 1_000 for r in records]


@pytest.fixture()
def run(tmp_path: Path) -> Path:
    (tmp_path / "traces").mkdir()
    return tmp_path


def read(folder: Path, **kw) -> tuple[list[dict], ReadStats]:
    stats = ReadStats()
    return list(read_records(folder, stats=stats, **kw)), stats


def test_package_exports_the_reader():
    assert trace.read_records is read_records and trace.ReadStats is ReadStats
    assert ReadStats() == ReadStats(files=0, records=0, truncated_files=[], bad_lines=0)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 16, 100, 1 << 17])
def test_every_frame_of_a_multi_frame_file_whatever_the_chunk_size(run: Path, chunk_size: int):
    records = [rec(i) for i in range(30)]
    data = frame(records[:10]) + frame(records[10:11]) + frame(records[11:25]) + frame(records[25:])
    (run / "traces" / NAME).write_bytes(data)
    got, stats = read(run, chunk_size=chunk_size)
    assert got == records  # every field, in file order
    assert stats == ReadStats(files=1, records=30, truncated_files=[], bad_lines=0)


def test_a_default_decompressor_would_see_only_the_first_frame(run: Path):
    """The trap this reader exists for: make sure the test data really has several frames."""
    data = frame([rec(0)]) + frame([rec(1)]) + frame([rec(2)])
    assert zstandard.ZstdDecompressor().decompressobj().decompress(data).count(b"\n") == 1
    (run / "traces" / NAME).write_bytes(data)
    assert ids(read(run)[0]) == [0, 1, 2]


@pytest.mark.parametrize("cut", [1, 2, 3, 5, 9])
@pytest.mark.parametrize("chunk_size", [4, 7, 1 << 17])
def test_torn_last_frame_keeps_every_complete_block(run: Path, cut: int, chunk_size: int):
    data = frame([rec(0), rec(1)]) + blocks([rec(2), rec(3)], [rec(4)], [rec(5), rec(6)])
    (run / "traces" / NAME).write_bytes(data[:-cut])  # the last block loses its end
    got, stats = read(run, chunk_size=chunk_size)
    assert ids(got) == [0, 1, 2, 3, 4]
    assert stats == ReadStats(files=1, records=5, truncated_files=[NAME], bad_lines=0)


def test_open_frame_with_every_block_whole_is_still_reported_torn(run: Path):
    (run / "traces" / NAME).write_bytes(frame([rec(0)]) + blocks([rec(1)], [rec(2)]))
    got, stats = read(run)
    assert ids(got) == [0, 1, 2] and stats.truncated_files == [NAME] and stats.bad_lines == 0


def raw_frame(*blocks_: bytes, last: bool = True) -> bytes:
    """A zstd frame made by hand of raw (stored) blocks, which a streaming decoder hands out byte by byte: the only
    way a cut inside a block shows a partial line. Header: magic, descriptor 0 (no size, no checksum), 1 MiB window."""
    out = MAGIC + b"\x00\x50"
    for n, payload in enumerate(blocks_):
        is_last = last and n == len(blocks_) - 1
        out += (len(payload) << 3 | int(is_last)).to_bytes(3, "little") + payload  # block type 0: raw
    return out


def test_raw_frames_are_real_zstd():
    payload = lines([rec(0), rec(1)])
    assert zstandard.ZstdDecompressor().decompressobj().decompress(raw_frame(payload[:9], payload[9:])) == payload


@pytest.mark.parametrize("chunk_size", [5, 64, 1 << 17])
def test_file_cut_in_the_middle_of_a_block_drops_the_partial_line(run: Path, chunk_size: int):
    second = lines([rec(i) for i in range(5, 9)])
    cut = second.index(b"\n", second.index(b"\n") + 1) + 20  # two whole lines, then 20 bytes of the third
    data = frame([rec(0), rec(1)]) + raw_frame(lines([rec(2), rec(3), rec(4)]), second, last=False)
    data = data[: len(data) - len(second) + cut]
    (run / "traces" / NAME).write_bytes(data)
    pieces = list(decompressed_chunks(run / "traces" / NAME, chunk_size))
    assert pieces[-1] is None and b"".join(pieces[:-1]).endswith(second[:cut])  # the partial line was decoded
    got, stats = read(run, chunk_size=chunk_size)
    assert got == [rec(i) for i in range(7)]
    assert stats == ReadStats(files=1, records=7, truncated_files=[NAME], bad_lines=0)


def test_file_cut_in_the_middle_of_a_compressed_block(run: Path):
    obj = zstandard.ZstdCompressor(level=1).compressobj()
    b1 = obj.compress(lines([rec(2)])) + obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    b2 = obj.compress(lines([rec(i, note="y" * 3000) for i in range(3, 40)])) + obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    (run / "traces" / NAME).write_bytes(frame([rec(0), rec(1)]) + b1 + b2[: len(b2) // 2])
    for chunk_size in (9, 1 << 17):
        got, stats = read(run, chunk_size=chunk_size)
        assert ids(got) == [0, 1, 2]  # a compressed block decodes whole or not at all
        assert stats == ReadStats(files=1, records=3, truncated_files=[NAME], bad_lines=0)


def test_file_cut_inside_a_frame_header(run: Path):
    data = frame([rec(0)]) + frame([rec(1)])
    (run / "traces" / NAME).write_bytes(data + frame([rec(2)])[:3])
    got, stats = read(run)
    assert ids(got) == [0, 1] and stats.truncated_files == [NAME]


def test_a_damaged_frame_costs_only_itself(run: Path):
    f1, f2, f3 = frame([rec(i) for i in range(20)]), frame([rec(i) for i in range(20, 40)]), frame([rec(i) for i in range(40, 60)])
    mid = len(f2) // 2
    damaged = f2[:mid] + bytes(b ^ 0xFF for b in f2[mid : mid + 8]) + f2[mid + 8 :]
    for bad in (damaged, f2[:mid], f2[:6] + b"\xff\xff\xff" + f2[9:]):  # flipped bytes, cut short, bad block header
        (run / "traces" / NAME).write_bytes(f1 + bad + f3)
        for chunk_size in (7, 1 << 17):
            got, stats = read(run, chunk_size=chunk_size)
            assert ids(got) == list(range(20)) + list(range(40, 60))
            assert stats == ReadStats(files=1, records=40, truncated_files=[NAME], bad_lines=0)


def test_trailing_zeros_after_complete_frames(run: Path):
    """What a crash can leave at the end of a file whose size was written before its data."""
    (run / "traces" / NAME).write_bytes(frame([rec(0)]) + frame([rec(1)]) + b"\0" * 4096)
    got, stats = read(run, chunk_size=1000)
    assert ids(got) == [0, 1] and stats.truncated_files == [NAME]


def test_empty_file_is_a_file_with_no_records(run: Path):
    (run / "traces" / NAME).write_bytes(b"")
    (run / "traces" / "trace_VAR_11_22.log.zst").write_bytes(frame([rec(3, "state_change")]))
    got, stats = read(run)
    assert got == [rec(3, "state_change")]
    assert stats == ReadStats(files=2, records=1, truncated_files=[], bad_lines=0)


def test_processes_and_threads_file_by_file_in_name_order(run: Path):
    files = {
        "trace_VAR_7_1.log.zst": [rec(50, "state_change", pid=7, tid=1)],
        "trace_API_7_1.log.zst": [rec(0, pid=7, tid=1), rec(1, "function_call (post)", pid=7, tid=1)],
        "trace_API_7_2.log.zst": [rec(5, pid=7, tid=2)],
        "trace_API_30_9.log.zst": [rec(9, pid=30, tid=9), rec(10, pid=30, tid=9)],
        "trace_API_100_1.log.zst": [rec(20, pid=100, tid=1)],
    }
    for name, records in files.items():
        (run / "traces" / name).write_bytes(frame(records))
    got, stats = read(run)
    expected = [r for name in sorted(files) for r in files[name]]
    assert got == expected
    assert [(r["process_id"], r["thread_id"]) for r in got] == [(100, 1), (30, 9), (30, 9), (7, 1), (7, 1), (7, 2), (7, 1)]
    assert stats == ReadStats(files=5, records=7, truncated_files=[], bad_lines=0)
    assert ids(read_records(run, kinds=("VAR",))) == [50]
    assert ids(read_records(run, kinds=("API",))) == [20, 9, 10, 0, 1, 5]


@pytest.mark.parametrize("chunk_size", [1, 3, 10, 64])
def test_lines_split_across_read_chunks(run: Path, chunk_size: int):
    records = [rec(i, note="z" * (37 * i % 101)) for i in range(25)]
    payload = lines(records)
    assert len(payload) > 20 * chunk_size
    obj = zstandard.ZstdCompressor().compressobj()  # blocks cut every 50 bytes, mid-line; one closed frame
    data = b"".join(obj.compress(payload[i : i + 50]) + obj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK) for i in range(0, len(payload), 50))
    (run / "traces" / NAME).write_bytes(data + obj.flush() + raw_frame(payload[:333], payload[333:]))
    payload += payload
    records += records
    pieces = list(decompressed_chunks(run / "traces" / NAME, chunk_size))
    assert None not in pieces and b"".join(pieces) == payload
    assert len(pieces) > 1  # streamed, not decoded in one piece
    assert any(not p.endswith(b"\n") for p in pieces)  # some line really straddles a boundary
    got, stats = read(run, chunk_size=chunk_size)
    assert got == records and stats.bad_lines == 0 and stats.truncated_files == []


def test_bad_lines_are_counted_and_skipped(run: Path):
    payload = lines([rec(0)]) + b"{not json\n" + lines([rec(1)]) + b"\n" + b"[1, 2]\n" + b'"str"\n' + lines([rec(2)])
    (run / "traces" / NAME).write_bytes(frame([]) + zstandard.ZstdCompressor().compress(payload))
    got, stats = read(run, chunk_size=5)
    assert ids(got) == [0, 1, 2]
    assert stats == ReadStats(files=1, records=3, truncated_files=[], bad_lines=4)  # blank and non-object lines too


def test_last_line_without_newline_in_a_complete_frame(run: Path):
    (run / "traces" / NAME).write_bytes(zstandard.ZstdCompressor().compress(lines([rec(0)]) + orjson.dumps(rec(1))))
    got, stats = read(run)
    assert ids(got) == [0, 1] and stats.truncated_files == [] and stats.bad_lines == 0


def test_run_folder_traces_folder_and_decompressed_folder_read_alike(tmp_path: Path):
    api = [rec(i) for i in range(12)]
    var = [rec(i, "state_change") for i in range(40, 44)]
    run = tmp_path / "run"
    (run / "traces").mkdir(parents=True)
    (run / "traces" / NAME).write_bytes(frame(api[:5]) + frame(api[5:]))
    (run / "traces" / "trace_VAR_11_22.log.zst").write_bytes(frame(var))
    (run / "run.json").write_text("{}")
    plain = tmp_path / "traincheck"  # as `zstd -d` leaves them, TrainCheck's own names
    plain.mkdir()
    (plain / "trace_API_11_22.log").write_bytes(lines(api))
    (plain / "trace_VAR_11_22.log").write_bytes(lines(var))
    (plain / "proxy_log.json").write_text("{}")
    expected = api + var
    for folder in (run, run / "traces", str(run), plain):
        got, stats = read(folder, chunk_size=8)
        assert got == expected, folder
        assert stats == ReadStats(files=2, records=16, truncated_files=[], bad_lines=0)


def test_decompressed_log_killed_mid_line_is_torn_not_bad(run: Path):
    (run / "traces" / "trace_API_11_22.log").write_bytes(lines([rec(0), rec(1)]) + orjson.dumps(rec(2))[:-4])
    got, stats = read(run, chunk_size=6)
    assert ids(got) == [0, 1]
    assert stats == ReadStats(files=1, records=2, truncated_files=["trace_API_11_22.log"], bad_lines=0)


def test_other_files_are_ignored(run: Path):
    t = run / "traces"
    (t / NAME).write_bytes(frame([rec(0)]))
    (t / (NAME + ".tmp")).write_bytes(frame([rec(99)]))  # a seal interrupted before its rename
    (t / "trace_API_dir").mkdir()
    (t / "INCOMPLETE").write_text("")
    (t / "notes.txt").write_text("{}\n")
    (t / "trace_OTHER_1_1.log.zst").write_bytes(frame([rec(98)]))
    got, stats = read(run)
    assert ids(got) == [0] and stats.files == 1


def test_spill_records_after_the_trace_file_and_orphan_spills_in_place(run: Path):
    t = run / "traces"
    # A torn file whose writer also left records in its spill, one already compressed (a kill between the block
    # write and clearing the spill), one cut mid-write and the NUL fill after it.
    (t / NAME).write_bytes(frame([rec(0)]) + blocks([rec(1), rec(2)]))
    (t / "spill_API_11_22.jsonl").write_bytes(lines([rec(2), rec(3)]) + b"{oops\n" + lines([rec(4)]) + b'{"type": "fun' + b"\0" * 64)
    # A thread killed before its first flush: only a spill, read where its trace file would sort.
    (t / "spill_API_11_5.jsonl").write_bytes(lines([rec(7, tid=5)]) + b"\0" * 16)
    (t / "trace_API_11_9.log.zst").write_bytes(frame([rec(8, tid=9)]))
    got, stats = read(run)
    assert [(r["thread_id"], r["time"] - 1_000) for r in got] == [(22, 0), (22, 1), (22, 2), (22, 3), (22, 4), (5, 7), (9, 8)]
    assert stats == ReadStats(files=3, records=7, truncated_files=[NAME], bad_lines=1)
    assert ids(read_records(run, kinds=("VAR",))) == []


def test_reading_is_lazy_and_stats_accumulate(run: Path):
    (run / "traces" / NAME).write_bytes(frame([rec(i) for i in range(3)]))
    stats = ReadStats()
    it = read_records(run, stats=stats)
    assert stats.files == 0  # nothing read before the first record is asked for
    assert next(it)["time"] == 1_000 and stats.records == 1
    list(it)
    list(read_records(run, stats=stats))
    assert stats == ReadStats(files=2, records=6, truncated_files=[], bad_lines=0)
