"""seal(): after a process died without closing its trace files, make each one a clean sequence of zstd frames
holding everything it wrote, including the records left in its spill file.

Everything streams: a trace can be many GB once decompressed, so no file is ever held in memory whole.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson
import zstandard

from .reader import _spill_for, decompressed_chunks, spill_records, trace_folder

FRAME_BYTES = 1 << 20  # JSON per rewritten frame, as the writer does


def _is_torn(path: Path) -> bool:
    return any(data is None for data in decompressed_chunks(path, resync=True))


def _complete_lines(path: Path) -> Iterator[bytes]:
    """The decodable content of a trace file, in pieces of whole lines: a line cut by a tear or by damage is
    dropped, the frames after damage are kept."""
    pending = b""
    for data in decompressed_chunks(path, resync=True):
        if data is None:
            pending = b""
            continue
        data = pending + data
        cut = data.rfind(b"\n") + 1
        pending = data[cut:]
        if cut:
            yield data[:cut]


class _LastTime:
    """Passes pieces of whole lines through, remembering the `time` of the last record."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self.pieces, self.time = pieces, None

    def __iter__(self) -> Iterator[bytes]:
        for piece in self.pieces:
            last = piece[piece.rfind(b"\n", 0, len(piece) - 1) + 1 :]
            try:
                self.time = orjson.loads(last).get("time", self.time)
            except (orjson.JSONDecodeError, AttributeError):
                pass
            yield piece


def _with_spill(trace: Path, spill: Path, recovered: list[bytes]) -> Iterator[bytes]:
    """The trace file's lines, then the spill's records after the last one it holds (collected in `recovered`)."""
    lines = _LastTime(_complete_lines(trace) if trace.exists() else ())
    yield from lines
    recovered.extend(spill_records(spill, lines.time))
    for line in recovered:
        yield line + b"\n"


def seal(run_dir: str | Path) -> dict:
    """Rewrite torn trace files and fold spill files into them; returns counts of what was done (`unsealed_files`:
    those that could not be rewritten and stay as the reader can read them)."""
    folder = trace_folder(run_dir)
    done = {"sealed_files": 0, "recovered_records": 0}
    if not folder.is_dir():
        return done
    for spill in sorted(folder.glob("spill_*.jsonl")):
        trace = folder / ("trace_" + spill.name[len("spill_") : -len(".jsonl")] + ".log.zst")
        recovered: list[bytes] = []
        if not _rewrite(trace, _with_spill(trace, spill, recovered)):
            done["unsealed_files"] = done.get("unsealed_files", 0) + 1
            continue
        spill.unlink()
        done["sealed_files"] += 1
        done["recovered_records"] += len(recovered)
    for trace in sorted(folder.glob("trace_*.log.zst")):
        if not _spill_for(trace).exists() and _is_torn(trace):
            if _rewrite(trace, _complete_lines(trace)):
                done["sealed_files"] += 1
            else:
                done["unsealed_files"] = done.get("unsealed_files", 0) + 1
    for marker in folder.glob(".held_trace_*"):  # left by a writer killed while holding (runtime/writer.py)
        marker.unlink()
    return done


def _rewrite(trace: Path, pieces: Iterable[bytes]) -> bool:
    """Write `pieces` (whole lines) as frames of about FRAME_BYTES cut at line ends, then replace `trace`. False when
    it cannot be written (a full disk, a file size limit): `trace` and its spill stay as they were, which the reader
    reads as well (up to the tear, the spill's records after it)."""
    tmp = trace.with_name(trace.name + ".tmp")
    try:
        _write_frames(tmp, pieces)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    os.replace(tmp, trace)
    return True


def _write_frames(tmp: Path, pieces: Iterable[bytes]) -> None:
    compressor = zstandard.ZstdCompressor(level=1)
    with open(tmp, "wb") as f:
        buf = b""
        for piece in pieces:
            buf += piece
            while len(buf) >= FRAME_BYTES:
                cut = buf.rfind(b"\n", 0, FRAME_BYTES) + 1 or buf.find(b"\n", FRAME_BYTES) + 1 or len(buf)
                f.write(compressor.compress(buf[:cut]))
                buf = buf[cut:]
        if buf:
            f.write(compressor.compress(buf))
