"""read_records(): every record of a run's trace files, reading across zstd frames and surviving a torn tail.

`zstandard.decompress()` and a default decompressobj stop after the first frame without a word, and with
`read_across_frames=True` a decompressobj keeps `.eof == False` after a complete multi-frame file just as after a
torn one (measured with python-zstandard 0.25), so it cannot report a torn tail. This reader walks the frames one by
one instead (a fresh decompressobj per frame, `unused_data` starts the next), streaming the file in chunks: a frame
still open at the end of the file is torn, and a damaged frame costs only itself (reading resumes at the next frame
magic). Either way the file is listed in `ReadStats.truncated_files`, every complete line decoded before the damage
is kept and the partial line after it dropped.

A writer killed before closing its file leaves `spill_<KIND>_<pid>_<tid>.jsonl` beside it (see runtime/writer.py):
the records after the last one the trace file holds are read from it, after the trace file's own.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import zstandard

CHUNK = 1 << 17  # compressed bytes per read: at ~60x, a few MiB of JSON per decompress call
MAGIC = b"\x28\xb5\x2f\xfd"  # a zstd frame's first four bytes


@dataclass
class ReadStats:
    """Counts gathered while reading; pass one as `read_records(..., stats=)`."""

    files: int = 0
    records: int = 0
    truncated_files: list[str] = field(default_factory=list)  # file names, each once
    bad_lines: int = 0  # lines that are not a JSON object (blank lines included)


def trace_folder(run_dir: str | Path) -> Path:
    folder = Path(run_dir)
    return folder / "traces" if (folder / "traces").is_dir() else folder


def _is_trace_name(name: str, prefixes: tuple[str, ...]) -> bool:
    return name.startswith(prefixes) and not name.endswith(".tmp")  # .tmp: a seal interrupted mid-rewrite


def trace_files(run_dir: str | Path, kinds: tuple[str, ...] = ("API", "VAR")) -> list[Path]:
    """The trace files of a run folder, its traces/ folder, or a folder of decompressed TrainCheck traces."""
    folder = trace_folder(run_dir)
    prefixes = tuple(f"trace_{k}_" for k in kinds)
    return sorted(p for p in folder.iterdir() if _is_trace_name(p.name, prefixes) and p.is_file())


def _spill_for(trace: Path) -> Path:
    # trace_API_<pid>_<tid>.log.zst -> spill_API_<pid>_<tid>.jsonl
    return trace.with_name("spill_" + trace.name[len("trace_") : -len(".log.zst")] + ".jsonl")


def _trace_for(spill: Path) -> Path:
    return spill.with_name("trace_" + spill.name[len("spill_") : -len(".jsonl")] + ".log.zst")


def _load(line: bytes):
    """The record on a line, or None when the line is not a JSON object."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def spill_records(path: Path, after_time: int | None, stats: ReadStats | None = None) -> list[bytes]:
    """Lines of a writer's spill file (left by a killed process) not yet in its trace file: those after the last
    time the trace file holds (times are strictly increasing per thread). The spill is NUL-filled after its last
    record; a record cut mid-write and lines that do not parse are dropped (counted in `stats.bad_lines`)."""
    data = path.read_bytes()
    end = data.find(b"\0")
    data = data[: end if end >= 0 else len(data)]
    lines = data.split(b"\n")
    lines.pop()  # empty after the last newline, or a record cut mid-write
    kept = []
    for line in lines:
        record = _load(line)
        if record is None:
            if stats is not None:
                stats.bad_lines += 1
            continue
        time = record.get("time")
        if after_time is None or not isinstance(time, int) or time > after_time:
            kept.append(line)
    return kept


def _next_magic(f, start: int, chunk_size: int) -> int:
    """File offset of the first frame magic at or after `start`, or -1."""
    f.seek(start)
    offset, tail = start, b""
    while True:
        chunk = f.read(max(chunk_size, 4096))
        if not chunk:
            return -1
        data = tail + chunk
        at = data.find(MAGIC)
        if at >= 0:
            return offset - len(tail) + at
        tail = data[-(len(MAGIC) - 1) :]
        offset += len(chunk)


def decompressed_chunks(path: Path, chunk_size: int = CHUNK, *, resync: bool = False) -> Iterator[bytes | None]:
    """The decompressed content of a multi-frame zstd file, in pieces, streaming `chunk_size` compressed bytes at a
    time. Yields None where the content breaks: a frame still open at the end of the file (torn), or bytes that do
    not decode. Without `resync` the None is the last item; with it, reading resumes at the next frame after
    undecodable bytes (a piece after a None starts a new frame, which the writer starts on a line boundary)."""
    fresh = zstandard.ZstdDecompressor().decompressobj
    with open(path, "rb") as f:
        obj = None
        buf = b""
        pos = 0  # file offset of buf[0]
        frame_start = 0
        while True:
            if not buf:
                buf = f.read(chunk_size)
                if not buf:
                    break
            if obj is None:
                obj, frame_start = fresh(), pos
            try:
                data = obj.decompress(buf)
            except zstandard.ZstdError:
                yield None
                if not resync:
                    return
                pos = _next_magic(f, frame_start + 1, chunk_size)
                if pos < 0:
                    return
                f.seek(pos)
                obj, buf = None, b""
                continue
            if data:
                yield data
            if obj.eof:  # a frame ended: what follows starts the next one
                rest = obj.unused_data
                pos += len(buf) - len(rest)
                obj, buf = None, rest
            else:
                pos += len(buf)
                buf = b""
    if obj is not None:  # the last frame never ended
        yield None


def _lines_of_zst(path: Path, stats: ReadStats, chunk_size: int) -> Iterator[bytes]:
    pending = b""
    for data in decompressed_chunks(path, chunk_size, resync=True):
        if data is None:
            if path.name not in stats.truncated_files:
                stats.truncated_files.append(path.name)
            pending = b""  # the partial line before a break is dropped
            continue
        lines = data.split(b"\n")
        lines[0] = pending + lines[0]
        pending = lines.pop()
        yield from lines
    if pending:
        yield pending  # a complete frame whose content lacks a final newline: the last line is whole


def _lines_of_plain(path: Path, stats: ReadStats, chunk_size: int) -> Iterator[bytes]:
    pending = b""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            lines = chunk.split(b"\n")
            lines[0] = pending + lines[0]
            pending = lines.pop()
            yield from lines
    if pending:
        if _load(pending) is None:  # a writer killed mid-line: torn, not a bad line
            stats.truncated_files.append(path.name)
        else:
            yield pending


def _is_zst(path: Path) -> bool:
    if path.name.endswith(".zst"):
        return True
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def trace_sources(run_dir: str | Path, kinds: tuple[str, ...] = ("API", "VAR")) -> list[Path]:
    """Every file `read_records` reads, in its order: the trace files, and the spill files of writers killed before
    their first flush (where their trace file would sort)."""
    folder = trace_folder(run_dir)
    files = [(p.name, p) for p in trace_files(folder, kinds)]
    # A process killed before its first flush has a spill file and no trace file yet.
    files += [
        (_trace_for(p).name, p)
        for k in kinds
        for p in folder.glob(f"spill_{k}_*.jsonl")
        if p.is_file() and not _trace_for(p).exists()
    ]
    return [p for _, p in sorted(files)]


def source_key(path: Path) -> tuple[str, int, int] | None:
    """(kind, pid, tid) from a trace or spill file name (`trace_API_<pid>_<tid>.log.zst`), or None."""
    stem = path.name.split(".", 1)[0]
    parts = stem.split("_")
    if len(parts) != 4 or parts[0] not in ("trace", "spill"):
        return None
    try:
        return parts[1], int(parts[2]), int(parts[3])
    except ValueError:
        return None


def read_file(path: Path, stats: ReadStats | None = None, chunk_size: int = CHUNK) -> Iterator[dict]:
    """Yield the records of one file of `trace_sources` (one thread's API or state records, in time order), with
    the records its writer left in a spill file after them."""
    stats = stats if stats is not None else ReadStats()
    stats.files += 1
    last_time = None
    spill = None
    if path.name.startswith("spill_"):
        lines = iter(spill_records(path, None, stats))
    elif _is_zst(path):
        lines = _lines_of_zst(path, stats, chunk_size)
        if path.name.endswith(".log.zst"):
            spill = _spill_for(path)
    else:
        lines = _lines_of_plain(path, stats, chunk_size)
    for line in lines:
        record = _load(line)
        if record is None:
            stats.bad_lines += 1
            continue
        stats.records += 1
        time = record.get("time")
        if isinstance(time, int):
            last_time = time
        yield record
    if spill is not None and spill.is_file():
        for line in spill_records(spill, last_time, stats):
            stats.records += 1
            yield orjson.loads(line)


def read_records(
    run_dir: str | Path,
    *,
    kinds: tuple[str, ...] = ("API", "VAR"),
    stats: ReadStats | None = None,
    chunk_size: int = CHUNK,
) -> Iterator[dict]:
    """Yield every record of every trace file of `run_dir` (a run folder, its `traces/` folder, or a folder of
    decompressed `trace_*.log` files), file by file in name order, each in file order. A spill file left by a killed
    writer is read right after its trace file (or, with no trace file, where that file would sort)."""
    stats = stats if stats is not None else ReadStats()
    for path in trace_sources(run_dir, kinds):
        yield from read_file(path, stats, chunk_size)
