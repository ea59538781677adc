"""Per-thread trace files: each record goes at once into a memory-mapped spill file, which the kernel keeps if the
process is killed; batches of the spill are compressed into the trace file as zstd block flushes.

So a SIGKILL loses no complete record: what was compressed is in `trace_*.log.zst` (every block flush is decodable
on its own) and what was not is in `spill_*.jsonl`, which the reader and `tc-rewrite` pick up. A block flush happens
at every training-step boundary, when the spill is half full, and at the first record after 0.5 s without one; the
frame is closed at about 1 MiB of JSON, so a damaged byte costs at most one frame.
"""

from __future__ import annotations

import mmap
import os
import sys
import time

import orjson
import zstandard

SPILL_BYTES = 4 << 20
FLUSH_AT = SPILL_BYTES // 2
FLUSH_AGE_NS = 500_000_000
FRAME_BYTES = 1 << 20
INCOMPLETE = "INCOMPLETE"  # made in the trace folder when a writer gave up
_DUMPS = orjson.dumps
_NEWLINE = orjson.OPT_APPEND_NEWLINE


def trace_name(kind: str, pid: int, tid: int) -> str:
    return f"trace_{kind}_{pid}_{tid}.log.zst"


def spill_name(kind: str, pid: int, tid: int) -> str:
    return f"spill_{kind}_{pid}_{tid}.jsonl"


class TraceWriter:
    """Owned by one thread; `flush`/`close` may also run from the exit path of another thread."""

    __slots__ = (
        "path", "spill_path", "spill", "pos", "fd", "compressor", "frame", "frame_bytes", "last_flush", "busy", "failed"
    )

    def __init__(self, trace_dir: str, kind: str, pid: int, tid: int) -> None:
        self.path = os.path.join(trace_dir, trace_name(kind, pid, tid))
        self.spill_path = os.path.join(trace_dir, spill_name(kind, pid, tid))
        self.spill: mmap.mmap | None = None
        self.pos = 0
        self.fd = -1
        # One compressor per writer: a ZstdCompressor runs one compression at a time, and frames stay open across
        # flushes, so writers sharing one (two threads, or a thread's API and VAR files) corrupt each other's frames.
        self.compressor = zstandard.ZstdCompressor(level=1)
        self.frame = None
        self.frame_bytes = 0
        self.last_flush = time.monotonic_ns()
        self.busy = False
        self.failed = False

    def append(self, record: dict, now: int) -> None:
        if self.failed or self.busy:  # busy: a signal handler's flush interrupted us
            return
        try:
            data = _DUMPS(record, option=_NEWLINE)
        except Exception as exc:
            warn_once(f"a record could not be encoded ({exc}); it is skipped")
            return
        if self.spill is None and self._open_spill() is None:
            return
        end = self.pos + len(data)
        if end > SPILL_BYTES:
            self.flush()
            if len(data) > SPILL_BYTES:
                self._compress(data)
                return
            end = self.pos + len(data)
        self.busy = True  # a flush from a signal handler must not see the spill half written
        self.spill[self.pos : end] = data
        self.pos = end
        self.busy = False
        if end > FLUSH_AT or now - self.last_flush > FLUSH_AGE_NS:
            self.flush()

    def _open_spill(self) -> mmap.mmap | None:
        try:
            fd = os.open(self.spill_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
            try:
                os.ftruncate(fd, SPILL_BYTES)
                self.spill = mmap.mmap(fd, SPILL_BYTES)
            finally:
                os.close(fd)
        except OSError as exc:
            self._fail(exc)
        return self.spill

    def flush(self, close_frame: bool = False) -> None:
        """Compress the spill into the trace file; the spill is cleared only after the write succeeded."""
        if self.busy or self.failed:
            return
        self.busy = True
        try:
            self.last_flush = time.monotonic_ns()
            pos = self.pos
            if pos:
                self._compress(self.spill[:pos], close_frame)
                self.spill[:pos] = bytes(pos)  # NUL marks where the valid records end
                self.pos = 0
            elif close_frame and self.frame is not None:
                self._write(self.frame.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
                self.frame = None
        except Exception as exc:  # disk full, unwritable folder: never the program's problem
            self._fail(exc)
        finally:
            self.busy = False

    def _compress(self, payload: bytes, close_frame: bool = False) -> None:
        if self.frame is None:
            self.frame = self.compressor.compressobj()
            self.frame_bytes = 0
        out = self.frame.compress(payload)
        self.frame_bytes += len(payload)
        if close_frame or self.frame_bytes >= FRAME_BYTES:
            out += self.frame.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
            self.frame = None
        else:
            out += self.frame.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        self._write(out)

    def _write(self, data: bytes) -> None:
        if self.fd < 0:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def _fail(self, exc: Exception) -> None:
        self.failed = True
        warn_once(
            f"trace files in {os.path.dirname(self.path)} cannot be written ({type(exc).__name__}: {exc}); "
            "the program runs on, and what could not be written is missing from the trace",
            key="write",
        )
        try:  # an empty marker needs no data blocks: it can be made when the disk is full
            os.close(os.open(os.path.join(os.path.dirname(self.path), INCOMPLETE), os.O_WRONLY | os.O_CREAT, 0o666))
        except OSError:
            pass

    def close(self) -> None:
        """Flush and close the frame; the spill file goes once everything is in the trace file."""
        self.flush(close_frame=True)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.spill is not None and not self.failed and self.pos == 0:
            self.spill.close()
            self.spill = None
            try:
                os.unlink(self.spill_path)
            except OSError:
                pass

    def abandon(self) -> None:
        """In a forked child: let go of the parent's mapping and files without touching them."""
        if self.spill is not None:
            self.spill.close()
        if self.fd >= 0:
            os.close(self.fd)
        self.spill, self.fd, self.failed = None, -1, True


_warned: set[str] = set()


def warn_once(message: str, key: str | None = None) -> None:
    """One line on stderr, once per process for each message (or each `key`)."""
    key = key or message
    if key in _warned:
        return
    _warned.add(key)
    try:
        sys.stderr.write(f"traincheck_rewrite: warning: {message}\n")
        sys.stderr.flush()
    except Exception:
        pass
