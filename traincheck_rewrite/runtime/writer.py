"""Per-thread trace files: buffered records, encoded in batches, written as zstd block flushes.

A block flush makes every byte written so far decodable even if the process is SIGKILLed a moment later, at a small
ratio cost; the frame is closed at about 1 MiB of JSON so a damaged byte costs at most one frame.
"""

from __future__ import annotations

import os
import sys
import time

import orjson
import zstandard

FLUSH_RECORDS = 4096
FLUSH_AGE_NS = 500_000_000
FRAME_BYTES = 1 << 20
_COMPRESSOR = zstandard.ZstdCompressor(level=1)


class TraceWriter:
    """Owned by one thread; `flush` may also be called from the exit path of another thread."""

    __slots__ = ("path", "buffer", "fd", "frame", "frame_bytes", "last_flush", "flushing", "failed", "records")

    def __init__(self, path: str) -> None:
        self.path = path
        self.buffer: list = []
        self.fd = -1
        self.frame = None
        self.frame_bytes = 0
        self.last_flush = time.monotonic_ns()
        self.flushing = False
        self.failed = False
        self.records = 0

    def append(self, record: dict, now: int) -> None:
        buffer = self.buffer
        buffer.append(record)
        if len(buffer) >= FLUSH_RECORDS or now - self.last_flush > FLUSH_AGE_NS:
            self.flush()

    def flush(self, close_frame: bool = False) -> None:
        if self.flushing or self.failed:
            return
        self.flushing = True
        try:
            buffer, self.buffer = self.buffer, []
            self.last_flush = time.monotonic_ns()
            if not buffer and not (close_frame and self.frame is not None):
                return
            out = bytearray()
            if buffer:
                # Appending each encoding at once and dropping it is ~9x cheaper than keeping them all for a join.
                payload = bytearray()
                dumps = orjson.dumps
                for record in buffer:
                    payload += dumps(record)
                    payload += b"\n"
                self.records += len(buffer)
                if self.frame is None:
                    self.frame = _COMPRESSOR.compressobj()
                    self.frame_bytes = 0
                out += self.frame.compress(payload)
                self.frame_bytes += len(payload)
            if close_frame or self.frame_bytes >= FRAME_BYTES:
                out += self.frame.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
                self.frame = None
            else:
                out += self.frame.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
            self._write(bytes(out))
        except Exception as exc:  # disk full, unwritable folder, unencodable record: never the program's problem
            self.failed = True
            warn_once(f"trace file {self.path} cannot be written ({type(exc).__name__}: {exc}); tracing stops for it")
        finally:
            self.flushing = False

    def _write(self, data: bytes) -> None:
        if self.fd < 0:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o666)
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def close(self) -> None:
        self.flush(close_frame=True)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


_warned: set[str] = set()


def warn_once(message: str) -> None:
    if message in _warned:
        return
    _warned.add(message)
    try:
        sys.stderr.write(f"traincheck_rewrite: warning: {message}\n")
        sys.stderr.flush()
    except Exception:
        pass
