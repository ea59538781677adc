"""LiveExport: TrainCheck's plain trace files made while the program runs, by `tc-rewrite` waiting for it.

The export after the run (export.py) is on the user's wait: for a trace of 100,000 records it takes about as long as
a tenth of a training run of a few seconds. Most of the time the program leaves a core idle, so `tc-rewrite` follows
the trace files as they grow, on that core, and exports each record as soon as its bytes are final; after the run
only the last records are left to do.

It is the same export, record for record (export.py's identities, open-call dropping, merging and repeated-data
rules), made in a different order. What the live export assumes is checked at the end, and when any of it fails the
caller runs the export after the run as before (`finish` returns None):
- the run ended with every file whole (`seal` found nothing to mend) and wrote no `INCOMPLETE` marker;
- the identities guessed for a file (process and thread by order of appearance of their first records; guessed once
  the file's first record is old enough that no older one can still be unwritten) are the ones the whole trace
  gives;
- each record is in its own thread's file, and a process has at most one state file (export.py compares a tensor's
  `data` with its previous record across a process's state records).

Bytes a writer may still rewrite are never read: while a thread's records are held (runtime/writer.py, until the
training loop is known), a marker `.held_<file name>` beside the file holds the offset after which the file may be
cut back. The file's size is read before the marker is looked at, so a hold that begins in between starts past it.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import zstandard

from .export import STATE, WRITE_BUFFER, ExportStats, _add, _first_records, _Identities, _Thread, _without_repeated_data, _write
from .reader import _load, source_key, trace_sources

POLL_S = 0.2
# A thread's first record reaches its file at most about half a second after it is made (runtime/writer.py): a file's
# identities are guessed once its first record is this old, when no older first record can still come to light.
SETTLE_NS = 1_500_000_000
INCOMPLETE = "INCOMPLETE"


class _Abandon(Exception):
    """An assumption of the live export does not hold: the export is made after the run instead."""


def _held_limit(path: Path) -> int | None:
    """The offset after which a held file may still change, or None when it is not held."""
    try:
        return int((path.parent / f".held_{path.name}").read_text())
    except (OSError, ValueError):
        return None


def _first_of(lines: list[bytes]) -> dict | None:
    """What the identities depend on, of the first record among `lines`."""
    for line in lines:
        record = _load(line)
        if record is not None:
            return {k: record.get(k) for k in ("process_id", "thread_id", "time", "meta_vars")}
    return None


class _Source:
    """One trace file followed as it grows: its undecoded bytes, its partial last line, where its records go."""

    def __init__(self, path: Path, kind: str, pid: int, tid: int) -> None:
        self.path, self.kind, self.pid, self.tid = path, kind, pid, tid
        self.offset = 0  # bytes of the file read so far
        self.frame = None  # decompressor of the frame being read
        self.pending = b""  # decompressed bytes after the last newline
        self.waiting: list[bytes] = []  # lines read, not yet exported (before the identities are guessed)
        self.first: dict | None = None  # what the identities depend on, of the first record
        self.identities: _Identities | None = None  # guessed at the first record, from the first records seen then
        self.ids: tuple | None = None  # (stable process, stable thread) in that guess
        self.out = None
        self.thread: _Thread | None = None
        self.last_data: dict = {}
        self.stats = ExportStats()

    def read_available(self, final: bool) -> list[bytes]:
        """Whole lines of the final bytes written since the last call (all of the file when `final`)."""
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size  # before the marker is looked at
                held = None if final else _held_limit(self.path)
                limit = size if held is None else min(size, held)
                if limit <= self.offset:
                    data = b""
                else:
                    f.seek(self.offset)
                    data = f.read(limit - self.offset)
        except FileNotFoundError:
            raise _Abandon(f"{self.path.name} went away") from None
        self.offset += len(data)
        text = self._decompress(data)
        if final and self.frame is not None:
            raise _Abandon(f"{self.path.name} ends inside a frame")
        lines = (self.pending + text).split(b"\n")
        self.pending = lines.pop()
        if final and self.pending:
            raise _Abandon(f"{self.path.name} ends without a newline")
        return lines

    def _decompress(self, data: bytes) -> bytes:
        out = []
        while data:
            if self.frame is None:
                self.frame = zstandard.ZstdDecompressor().decompressobj()
            try:
                out.append(self.frame.decompress(data))
            except zstandard.ZstdError as exc:
                raise _Abandon(f"{self.path.name}: {exc}") from None
            if not self.frame.eof:
                break
            data = self.frame.unused_data
            self.frame = None
        return b"".join(out)


class LiveExport:
    """Follows `run_dir/traces` from `start()` until `finish()`; see the module docstring."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.folder = self.run_dir / "traces"
        self.staging = self.run_dir / f".plain_traces.live-{os.getpid()}"
        self.sources: dict[str, _Source] = {}
        self.failed: str | None = None
        self.stop = threading.Event()
        self.lock = threading.Lock()  # one poll at a time (the follower thread's, or a caller's)
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        shutil.rmtree(self.staging, ignore_errors=True)
        self.staging.mkdir()
        self.thread = threading.Thread(target=self._follow, name="tc-rewrite-live-export", daemon=True)
        self.thread.start()

    def _follow(self) -> None:
        while not self.stop.wait(POLL_S):
            if not self.poll():
                return

    def poll(self, final: bool = False) -> bool:
        """Export what is final in every file now (all of it when `final`: the program has ended); False once the
        live export is given up. The follower thread calls it every POLL_S."""
        with self.lock:
            return self._poll(final)

    def _poll(self, final: bool) -> bool:
        if self.failed is not None:
            return False
        try:
            for path in self._paths():
                source = self.sources.get(path.name)
                if source is None:
                    kind, pid, tid = source_key(path)
                    source = self.sources[path.name] = _Source(path, kind, pid, tid)
                source.waiting += source.read_available(final)
                if source.first is None:
                    source.first = _first_of(source.waiting)
            settled = time.monotonic_ns() - SETTLE_NS
            unknown = any(s.first is None and s.path.stat().st_size for s in self.sources.values())  # held from its start
            for source in self.sources.values():
                if source.ids is None:
                    first_time = source.first["time"] if source.first is not None else None
                    if first_time is None or not (final or (type(first_time) is int and first_time < settled and not unknown)):
                        continue
                    self._begin(source)
                lines, source.waiting = source.waiting, []
                self._export(source, lines)
        except _Abandon as exc:
            self.failed = str(exc)
        except Exception as exc:  # a bug of ours must not cost the export: the export after the run is made instead
            self.failed = f"{type(exc).__name__}: {exc}"
        return self.failed is None

    def _paths(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        if (self.folder / INCOMPLETE).exists():
            raise _Abandon("a writer gave up")
        paths = trace_sources(self.folder)
        if any(not p.name.endswith(".log.zst") for p in paths):
            raise _Abandon("spill files")
        return paths

    def _export(self, source: _Source, lines: list[bytes]) -> None:
        for line in lines:
            record = _load(line)
            if record is None:
                source.stats.bad_lines += 1
                continue
            if record.get("process_id") != source.pid or record.get("thread_id") != source.tid:
                raise _Abandon(f"{source.path.name} holds another thread's record")
            if source.kind == "VAR":
                if record.get("type") != STATE:
                    raise _Abandon(f"{source.path.name} holds an API record")
                source.identities.state(record)
                _write(source.out, (_without_repeated_data(record, source.last_data, source.stats),), source.stats)
            else:
                if record.get("type") == STATE:
                    raise _Abandon(f"{source.path.name} holds a state record")
                source.thread.add(source.identities.api(record), source.stats)

    def _begin(self, source: _Source) -> None:
        """The identities of a file, guessed from the first records seen so far (checked in `finish`)."""
        identities = source.identities = _Identities([s.first for s in self.sources.values() if s.first is not None])
        source.ids = (identities.process(source.pid), identities.thread(source.pid, source.tid))
        if source.kind == "VAR" and any(s.kind == "VAR" and s.pid == source.pid and s is not source and s.first for s in self.sources.values()):
            raise _Abandon("a process with two state files")
        name = f"trace_{source.kind}_{source.ids[0]}_{source.ids[1]}.log"
        source.out = open(self.staging / name, "wb", buffering=WRITE_BUFFER)
        if source.kind == "API":
            source.thread = _Thread(source.out)

    def finish(self, sealed: bool) -> ExportStats | None:
        """After the program ended: the rest of every file, then the plain files moved into the run folder, with the
        export's statistics; None (and nothing moved) when an assumption failed (`failed` says which)."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        try:
            if sealed:
                self.failed = self.failed or "a trace file was mended after the run"
            if self.poll(final=True):
                return self._complete()
            return None
        finally:
            for source in self.sources.values():
                if source.out is not None:
                    source.out.close()
            shutil.rmtree(self.staging, ignore_errors=True)

    def _complete(self) -> ExportStats | None:
        final = _Identities(_first_records(self.run_dir))
        stats = ExportStats()
        for source in self.sources.values():
            if source.first is None:
                continue
            if source.ids != (final.process(source.pid), final.thread(source.pid, source.tid)):
                self.failed = f"{source.path.name}: its place among the processes and threads changed"
                return None
            if source.thread is not None:
                source.thread.flush(source.stats)
            source.out.close()
            _add(stats, source.stats)
        for path in sorted(self.staging.iterdir()):
            if path.stat().st_size == 0:  # every record of it was a dropped open call
                path.unlink()
        stats.files = sum(1 for p in self.staging.iterdir() if p.name.startswith("trace_"))
        for path in sorted(self.staging.iterdir()):
            os.replace(path, self.run_dir / path.name)
        return stats
