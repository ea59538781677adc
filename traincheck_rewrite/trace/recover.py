"""seal(): after a process died without closing its trace files, make each one a clean sequence of zstd frames
holding everything it wrote, including the records left in its spill file."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import zstandard

from .reader import _spill_for, decompressed_chunks, spill_records, trace_folder


def _content(path: Path) -> tuple[bytes, bool]:
    """The decodable content of a trace file, every frame after a damaged one included, each stretch cut after its
    last complete line; and whether anything was torn or damaged."""
    stretches, parts, torn = [], [], False
    for data in decompressed_chunks(path, resync=True):
        if data is None:
            torn = True
            stretches.append(b"".join(parts))
            parts = []
            continue
        parts.append(data)
    stretches.append(b"".join(parts))
    return b"".join(s[: s.rfind(b"\n") + 1] for s in stretches), torn


def _last_time(content: bytes) -> int | None:
    tail = content[content.rfind(b"\n", 0, len(content) - 1) + 1 :]
    return orjson.loads(tail).get("time") if tail.strip() else None


def seal(run_dir: str | Path) -> dict:
    """Rewrite torn trace files and fold spill files into them; returns counts of what was done."""
    folder = trace_folder(run_dir)
    done = {"sealed_files": 0, "recovered_records": 0}
    if not folder.is_dir():
        return done
    for spill in sorted(folder.glob("spill_*.jsonl")):
        trace = folder / ("trace_" + spill.name[len("spill_") : -len(".jsonl")] + ".log.zst")
        content, _ = _content(trace) if trace.exists() else (b"", False)
        extra = spill_records(spill, _last_time(content))
        _rewrite(trace, content + b"".join(line + b"\n" for line in extra))
        spill.unlink()
        done["sealed_files"] += 1
        done["recovered_records"] += len(extra)
    for trace in sorted(folder.glob("trace_*.log.zst")):
        if _spill_for(trace).exists():
            continue
        content, torn = _content(trace)
        if torn:
            _rewrite(trace, content)
            done["sealed_files"] += 1
    return done


def _rewrite(trace: Path, content: bytes) -> None:
    tmp = trace.with_name(trace.name + ".tmp")
    compressor = zstandard.ZstdCompressor(level=1)
    with open(tmp, "wb") as f:
        start = 0
        while start < len(content):  # frames of about 1 MiB, cut at line ends
            end = content.rfind(b"\n", start, start + (1 << 20)) + 1 or len(content)
            f.write(compressor.compress(content[start:end]))
            start = end
    os.replace(tmp, trace)
