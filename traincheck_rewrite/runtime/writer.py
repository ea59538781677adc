"""Per-thread trace files: records wait in memory as tuples and are written in batches, each batch a zstd block flush
appended to the trace file (decodable on its own, and kept by the kernel if the process is then killed).

A batch is written when the training loop starts a new step (recorder: `step` goes up), when the thread has made
`BATCH` records, when its oldest waiting record is `FLUSH_AGE_NS` old (the recorder's flusher thread looks every
0.1 s), and at every way out of the process (exit, exceptions, SIGTERM, `os._exit`, multiprocessing workers). So a
SIGKILL loses at most the records of the training step in progress, or of the last half second outside training.
The frame is closed at about 1 MiB of JSON, so a damaged byte costs at most one frame.

While the step counter holds a thread's records (steps.py), they are written as usual but kept: when the training
loop becomes known, the file is cut back to where holding began and they are written again, relabelled. Meanwhile a
marker beside the file (`.held_<file name>`, holding that offset) tells a reader following the file as it grows
(trace/live.py) that the bytes after it may still change.
"""

from __future__ import annotations

import os
import threading
import time

import orjson
import zstandard

from .encode import DICT, encode
from .warn import warn_once

BATCH = 8192
FLUSH_AGE_NS = 500_000_000
FRAME_BYTES = 1 << 20
INCOMPLETE = "INCOMPLETE"  # made in the trace folder when a writer gave up
_DUMPS = orjson.dumps


def trace_name(kind: str, pid: int, tid: int) -> str:
    return f"trace_{kind}_{pid}_{tid}.log.zst"


def held_marker(trace_path: str) -> str:
    """The file that exists while the bytes of `trace_path` after the offset it holds may still be rewritten."""
    folder, name = os.path.split(trace_path)
    return os.path.join(folder, f".held_{name}")


class TraceWriter:
    """Records of one thread are appended by that thread alone (`records.append`, atomic); `flush`, `hold` and
    `release` may run in any thread and take `lock` (the flusher thread, the exit path, another thread releasing)."""

    __slots__ = (
        "path", "pid", "tid", "records", "lock", "flushing", "fd", "compressor", "frame", "frame_bytes", "last_time",
        "failed", "held", "hold_offset", "hold_time", "closed",
    )

    def __init__(self, trace_dir: str, kind: str, pid: int, tid: int) -> None:
        self.path = os.path.join(trace_dir, trace_name(kind, pid, tid))
        self.pid, self.tid = pid, tid
        self.records: list = []  # tuples waiting to be written (encode.py)
        self.lock = threading.RLock()  # re-entrant: a SIGTERM handler may close the writer its own thread holds
        self.flushing = 0  # ident of the thread inside flush (a signal handler on that thread must not wait for it)
        self.fd = -1
        # One compressor per writer: a ZstdCompressor runs one compression at a time, and frames stay open across
        # flushes, so writers sharing one (two threads, or a thread's API and VAR files) corrupt each other's frames.
        self.compressor = zstandard.ZstdCompressor(level=1)
        self.frame = None
        self.frame_bytes = 0
        self.last_time = 0
        self.failed = False
        self.closed = False
        self.held: list | None = None  # records written since holding began, kept to be written again relabelled
        self.hold_offset = 0
        self.hold_time = 0

    def append(self, record: dict, now: int) -> None:
        """A finished record (a dict with its own time and meta variables)."""
        self.records.append((DICT, None, now, None, record))

    def flush(self, close_frame: bool = False) -> None:
        """Encode and write what waits; a record is dropped from memory only after its batch was written."""
        if self.failed:
            self.records.clear()
            return
        with self.lock:
            self._write_waiting(close_frame)

    def _write_waiting(self, close_frame: bool = False) -> None:
        self.flushing = threading.get_ident()
        try:
            records = self.records
            n = len(records)
            if n:
                batch = records[:n]
                data, last = encode(batch, self.pid, self.tid, self.last_time)
                self._compress(data, close_frame)
                self.last_time = last
                del records[:n]  # appends made meanwhile stay
                if self.held is not None:
                    self.held += batch
            elif close_frame and self.frame is not None:
                self._write(self.frame.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
                self.frame = None
        except Exception as exc:  # disk full, unwritable folder: never the program's problem
            self._fail(exc)
        finally:
            self.flushing = 0

    def oldest(self) -> int | None:
        """The time of the oldest record waiting, if any."""
        try:
            return self.records[0][2]
        except IndexError:
            return None

    def hold(self) -> None:
        """Keep the records from now on until `release`: what waits is written, the frame closed (so the held records
        start a frame of their own, which `release` can cut off)."""
        with self.lock:
            self._write_waiting(close_frame=True)
            if self.failed:
                return
            self.held, self.hold_time = [], self.last_time
            self.hold_offset = os.lseek(self.fd, 0, os.SEEK_END) if self.fd >= 0 else 0
            self._mark_held(True)

    def release(self, since: int | None) -> int:
        """Stop holding; with `since`, the records from that time on (written or waiting) get `relabelled` meta: the
        file is cut back to where holding began and the held records are written again. Returns how many were held."""
        with self.lock:
            held, self.held = self.held, None
            if held is None or self.failed:
                return 0
            try:
                return self._release(held, since)
            finally:
                self._mark_held(False)  # after the rewrite: what the file holds now stays

    def _release(self, held: list, since: int | None) -> int:
        records = self.records
        n = len(records)
        count = len(held) + n
        if since is None or not ((held and held[-1][2] >= since) or (n and records[n - 1][2] >= since)):
            return count
        self.flushing = threading.get_ident()
        try:
            data, last = encode(held + records[:n], self.pid, self.tid, self.hold_time, since)
            self.frame = None
            if self.fd >= 0:
                os.ftruncate(self.fd, self.hold_offset)
            self._compress(data)
            self.last_time = last
            del records[:n]
        except Exception as exc:
            self._fail(exc)
        finally:
            self.flushing = 0
        return count

    def _mark_held(self, held: bool) -> None:
        marker = held_marker(self.path)
        try:
            if held:
                with open(marker, "w") as f:
                    f.write(str(self.hold_offset))
            else:
                os.unlink(marker)
        except OSError:  # the marker only helps a live reader, which reads the whole file after the run anyway
            pass

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
        self.records.clear()
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
        """Write what waits and close the frame and the file (held records stay as written)."""
        with self.lock:
            was_held, self.held = self.held is not None, None
            self._write_waiting(close_frame=True)
            if was_held:
                self._mark_held(False)
            self.closed = True
            if self.fd >= 0:
                os.close(self.fd)
                self.fd = -1

    def abandon(self) -> None:
        """In a forked child: let go of the parent's file and records without touching them."""
        if self.fd >= 0:
            os.close(self.fd)
        self.fd, self.failed, self.records = -1, True, []
