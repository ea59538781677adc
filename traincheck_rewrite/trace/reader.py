"""read_records(): every record of a run's trace files, reading across zstd frames and surviving a torn tail.

`zstandard.decompress()` and a default decompressobj stop after the first frame without a word, and
`read_across_frames=True` cannot tell a torn last frame from a complete one; this reader walks the frames one by
one (`unused_data` starts the next) and reports a torn last frame through `ReadStats.truncated_files`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import zstandard

CHUNK = 1 << 20


@dataclass
class ReadStats:
    files: int = 0
    records: int = 0
    truncated_files: list[str] = field(default_factory=list)
    bad_lines: int = 0


def trace_files(run_dir: str | Path, kinds: tuple[str, ...] = ("API", "VAR")) -> list[Path]:
    """The trace files of a run folder, its traces/ folder, or a folder of decompressed TrainCheck traces."""
    folder = trace_folder(run_dir)
    prefixes = tuple(f"trace_{k}_" for k in kinds)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.startswith(prefixes))


def trace_folder(run_dir: str | Path) -> Path:
    folder = Path(run_dir)
    return folder / "traces" if (folder / "traces").is_dir() else folder


def spill_records(path: Path, after_time: int | None) -> list[bytes]:
    """Lines of a writer's spill file (left by a killed process) not yet in its trace file: those after the last
    time the trace file holds (times are strictly increasing per thread)."""
    data = path.read_bytes()
    end = data.find(b"\0")
    data = data[: end if end >= 0 else len(data)]
    lines = data.split(b"\n")
    lines.pop()  # empty after the last newline, or a record cut mid-write
    if after_time is None:
        return lines
    return [line for line in lines if orjson.loads(line).get("time", 0) > after_time]


def _spill_for(trace: Path) -> Path:
    # trace_API_<pid>_<tid>.log.zst -> spill_API_<pid>_<tid>.jsonl
    return trace.with_name("spill_" + trace.name[len("trace_") : -len(".log.zst")] + ".jsonl")


def decompressed_chunks(path: Path, chunk_size: int = CHUNK) -> Iterator[bytes | None]:
    """The decompressed content of a multi-frame zstd file, frame by frame; yields None last if the file ends in
    a torn frame (or undecodable bytes), after everything that could be decoded before it."""
    fresh = zstandard.ZstdDecompressor().decompressobj
    obj, started = fresh(), False
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            while chunk:
                started = True
                try:
                    data = obj.decompress(chunk)
                except zstandard.ZstdError:
                    yield None
                    return
                if data:
                    yield data
                if obj.eof:  # a frame ended: what follows starts the next one
                    chunk, obj, started = obj.unused_data, fresh(), False
                else:
                    chunk = b""
    if started:
        yield None


def _lines_of_zst(path: Path, stats: ReadStats, chunk_size: int) -> Iterator[bytes]:
    pending = b""
    for data in decompressed_chunks(path, chunk_size):
        if data is None:
            stats.truncated_files.append(path.name)
            return  # a partial last line of a torn frame is dropped
        lines = (pending + data).split(b"\n")
        pending = lines.pop()
        yield from lines
    if pending:
        yield pending


def _lines_of_plain(path: Path, chunk_size: int) -> Iterator[bytes]:
    pending = b""
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()
            yield from lines
    if pending:
        yield pending


def read_records(
    run_dir: str | Path,
    *,
    kinds: tuple[str, ...] = ("API", "VAR"),
    stats: ReadStats | None = None,
    chunk_size: int = CHUNK,
) -> Iterator[dict]:
    """Yield every record of every trace file, file by file (sorted by name), in file order."""
    stats = stats if stats is not None else ReadStats()
    files = trace_files(run_dir, kinds)
    # A process killed before its first flush has a spill file and no trace file yet.
    folder = trace_folder(run_dir)
    orphans = [
        p for k in kinds for p in sorted(folder.glob(f"spill_{k}_*.jsonl"))
        if not (folder / ("trace_" + p.name[len("spill_") : -len(".jsonl")] + ".log.zst")).exists()
    ]
    for path in files + orphans:
        stats.files += 1
        last_time = None
        if path.name.startswith("spill_"):
            lines = iter(spill_records(path, None))
        elif path.suffix == ".zst":
            lines = _lines_of_zst(path, stats, chunk_size)
        else:
            lines = _lines_of_plain(path, chunk_size)
        for line in lines:
            if not line.strip():
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                stats.bad_lines += 1
                continue
            stats.records += 1
            last_time = record.get("time", last_time)
            yield record
        spill = _spill_for(path) if path.suffix == ".zst" else None
        if spill is not None and spill.exists():
            for line in spill_records(spill, last_time):
                stats.records += 1
                yield orjson.loads(line)
