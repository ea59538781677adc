"""LiveExport: TrainCheck's plain trace files, in the run folder under their own names, written while the program runs.

TrainCheck's online checker (`traincheck-onlinecheck -f RUN`) and our `--check` read the run folder while the program
writes it, and the export after the run (export.py) would be on the user's wait. So `tc-rewrite` follows the trace
files as they grow, on the core the program leaves idle, and appends each record to its plain file as soon as its
bytes are final, in whole lines (a line cut in two is lost to the checker).

It is the same export, record for record (export.py's identities, merging, stage and repeated-data rules), made in a
different order: API records are written at once (`_Thread(stream=True)`), not held until their outermost call
closes. What the live export assumes is checked at the end; when any of it fails, the files written are removed and
the caller runs the export after the run as before (`finish` returns None):
- every file holds what seal() keeps of it: a file whose writer was killed is read to its last whole line (the lines
  seal() keeps, counted), no writer spilled or wrote an `INCOMPLETE` marker, and no call was left open (the export
  after the run drops such calls; the live files already hold their pre records);
- the identities guessed for a file (process and thread by order of appearance of their first records; guessed once
  the file's first record is old enough that no older one can still be unwritten) are the ones the whole trace
  gives;
- each record is in its own thread's file, and a process has at most one state file (export.py compares a tensor's
  `data` with its previous record across a process's state records).

The API records of all files go into one plain file, `trace_API_all.log`, whose name needs no guess: what each poll
exports, in export.py's step order (why the engine needs it is there), after what the polls before exported. Records
go into it only up to what every API file can give: while a thread's file is held (below), up to the last record
read from it; while a file is not begun (its identities not guessed yet), up to its first record, and not at all
while one has no readable record yet; so a progress mark in it holds for every process.

The checker checks records across files in time order: it holds every file back at the time of the last line it read
from the slowest file, so a file that stops growing (a finished thread, a state file while nothing changes) would
hold checking back for good. A file with nothing new for a while gets a progress mark, a line `{"time": T}` with no
other key, promising that no record older than T will follow in it; at the end every file gets
`{"time": T, "end_of_trace": N}` (N: how many plain files the run has), so the checker can check the last records and
know it has read everything. TrainCheck's engine reads past such lines (no `type`, no call, no variable).

Bytes a writer may still rewrite are never read: while a thread's records are held (runtime/writer.py, until the
training loop is known), a marker `.held_<file name>` beside the file holds the offset after which the file may be
cut back. The file's size is read before the marker is looked at, so a hold that begins in between starts past it.
"""

from __future__ import annotations

import heapq
import os
import threading
import time
from pathlib import Path

import orjson
import zstandard

from .export import (
    API_FILE, STATE, WRITE_BUFFER, ExportStats, _add, _first_records, _Identities, _Thread, _traincheck_state, _write, made_at,
    step_order,
)  # fmt: skip
from .reader import _load, source_key, trace_sources
from .recover import _complete_lines

POLL_S = 0.2
# Every record made this long before a file was read is in it (a writer flushes what is half a second old, its flusher
# looks every 0.1 s; runtime/writer.py), with a margin. Records are exported in the order the program made them
# across all files, up to that horizon: a file that comes to light later (a new process or thread) holds nothing older
# than what the checker has read elsewhere, and a file's identities are guessed when its first record is older, when
# no older first record can still come to light. It is also what a progress mark promises.
HORIZON_NS = 1_000_000_000
MARK_EVERY_NS = 500_000_000  # an idle file's marks, at most this often
INCOMPLETE = "INCOMPLETE"
END_OF_TRACE = "end_of_trace"
_NEVER = float("inf")


class _Abandon(Exception):
    """An assumption of the live export does not hold: the export is made after the run instead."""


def _held_limit(path: Path) -> int | None:
    """The offset after which a held file may still change, or None when it is not held."""
    try:
        return int((path.parent / f".held_{path.name}").read_text())
    except (OSError, ValueError):
        return None


def _first_of(records: list[dict]) -> dict | None:
    """What the identities depend on, of the first of `records`."""
    if not records:
        return None
    return {k: records[0].get(k) for k in ("process_id", "thread_id", "time", "meta_vars")}


def _made_before(records: list[dict], horizon) -> int:
    """How many of a file's `records` (in the order they were made) were made before `horizon`."""
    for n, record in enumerate(records):
        when = record.get("time")
        if type(when) is int and when >= horizon:
            return n
    return len(records)


class _PlainFile:
    """A plain trace file in the run folder, appended in whole lines: made at its first line, flushed after each
    poll, so a reader never finds half a line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.file = None
        self.last_time = 0  # the time of the last line written (a record's or a mark's)

    def write(self, data: bytes) -> int:
        if self.file is None:
            self.file = open(self.path, "wb", buffering=WRITE_BUFFER)
        return self.file.write(data)

    def mark(self, now: int, **extra) -> None:
        self.write(orjson.dumps({"time": now, **extra}, option=orjson.OPT_APPEND_NEWLINE))
        self.last_time = now

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


class _Source:
    """One trace file followed as it grows: its undecoded bytes, its partial last line, where its records go."""

    def __init__(self, path: Path, kind: str, pid: int, tid: int) -> None:
        self.path, self.kind, self.pid, self.tid = path, kind, pid, tid
        self.offset = 0  # bytes of the file read so far
        self.frame = None  # decompressor of the frame being read
        self.pending = b""  # decompressed bytes after the last newline
        self.waiting: list[dict] = []  # records read, not yet exported (younger than the horizon)
        self.first: dict | None = None  # what the identities depend on, of the first record
        self.identities: _Identities | None = None  # guessed at the first record, from the first records seen then
        self.ids: tuple | None = None  # (stable process, stable thread) in that guess
        self.out: _PlainFile | None = None
        self.thread: _Thread | None = None
        self.last_data: dict = {}
        self.held = False  # bytes past what was read may still be rewritten
        self.read_until = -1  # the time of the last record read: while held, the file's next records are younger
        self.lines = 0  # lines read (records and bad lines)
        self.torn = False  # the file ended inside a frame or a line (its writer was killed)
        self.stats = ExportStats()

    def read_available(self, final: bool) -> list[dict]:
        """The records of the final bytes written since the last call (all of the file when `final`, when a torn end
        is dropped as seal() drops it)."""
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size  # before the marker is looked at
                held = None if final else _held_limit(self.path)
                self.held = held is not None
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
        lines = (self.pending + text).split(b"\n")
        self.pending = lines.pop()
        if final:
            self.torn = self.frame is not None or bool(self.pending)
        self.lines += len(lines)
        records = []
        for line in lines:
            record = _load(line)
            if record is None:
                self.stats.bad_lines += 1
            else:
                records.append(record)
        if records:
            self.read_until = max(self.read_until, made_at(records[-1]))
        return records

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
    """Follows `run_dir/traces` from `start()` until `finish()`; see the module docstring. `calls` maps each exported
    call (process, func_call_id) to (site, parent_id), for reports that name the program's own line of a call."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.folder = self.run_dir / "traces"
        self.sources: dict[str, _Source] = {}
        self.failed: str | None = None
        self.stop = threading.Event()
        self.lock = threading.Lock()  # one poll at a time (the follower thread's, or a caller's)
        self.thread: threading.Thread | None = None
        self.calls: dict[tuple, tuple] = {}
        self.api_out = _PlainFile(self.run_dir / API_FILE)  # shared by every API file's records
        self.last_step: dict = {}  # process -> the highest `meta_vars.step` exported

    def start(self) -> None:
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
            horizon = _NEVER if final else time.monotonic_ns() - HORIZON_NS  # taken before any file is read
            for path in self._paths():
                source = self.sources.get(path.name)
                if source is None:
                    kind, pid, tid = source_key(path)
                    source = self.sources[path.name] = _Source(path, kind, pid, tid)
                source.waiting += source.read_available(final)
                if source.first is None:
                    source.first = _first_of(source.waiting)
            unknown = any(s.first is None and s.path.stat().st_size for s in self.sources.values())  # held from its start
            for source in self.sources.values():
                if source.ids is None:
                    first_time = source.first["time"] if source.first is not None else None
                    if first_time is not None and (final or (type(first_time) is int and first_time < horizon and not unknown)):
                        self._begin(source)
            api_sources = [s for s in self.sources.values() if s.kind == "API"]
            api_horizon = horizon if final else min([horizon, *(self._api_bound(s, horizon) for s in api_sources)])
            api = []
            for source in self.sources.values():
                if source.ids is None:
                    continue
                ready = _made_before(source.waiting, api_horizon if source.kind == "API" else horizon)
                records, source.waiting = source.waiting[:ready], source.waiting[ready:]
                if source.kind == "API":
                    api.append([(record, source) for record in records])
                else:
                    self._export(source, records)
            for record, source in heapq.merge(*api, key=lambda pair: step_order(pair[0], pair[1].ids[0])):
                self._export(source, (record,))
            if not final:  # the API file's horizon waits for the held files: nothing older follows it in any file
                self._mark_if_idle(self.api_out, api_horizon)
                for source in self.sources.values():
                    if source.kind == "VAR" and source.out is not None and not source.held:
                        self._mark_if_idle(source.out, horizon)
            for out in self._outputs():
                out.flush()
        except _Abandon as exc:
            self.failed = str(exc)
        except Exception as exc:  # a bug of ours must not cost the export: the export after the run is made instead
            self.failed = f"{type(exc).__name__}: {exc}"
        return self.failed is None

    @staticmethod
    def _api_bound(source: _Source, horizon: int) -> int:
        """How far the shared API file may be written for this API file's sake: a file not begun yet will write its
        records from its first on (none readable yet: held from its start, nothing), a held one those after the last
        it let be read."""
        if source.ids is None:
            first = source.first.get("time") if source.first is not None else None
            if type(first) is int:
                return first
            return -1 if source.path.stat().st_size else horizon
        return source.read_until if source.held else horizon

    def _mark_if_idle(self, out: _PlainFile, horizon: int) -> None:
        """A progress mark in a file that has had nothing new for a while, so that the checker reading it does not
        hold the other files back at its last record (see the module docstring)."""
        if out.file is not None and out.last_time < horizon - MARK_EVERY_NS:
            out.mark(horizon)

    def _paths(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        if (self.folder / INCOMPLETE).exists():
            raise _Abandon("a writer gave up")
        paths = trace_sources(self.folder)
        if any(not p.name.endswith(".log.zst") for p in paths):
            raise _Abandon("spill files")
        return paths

    def _export(self, source: _Source, records: list[dict]) -> None:
        out = source.out
        for record in records:
            if record.get("process_id") != source.pid or record.get("thread_id") != source.tid:
                raise _Abandon(f"{source.path.name} holds another thread's record")
            when = record.get("time")
            if type(when) is int and when > out.last_time:
                out.last_time = when
            if source.kind == "VAR":
                if record.get("type") != STATE:
                    raise _Abandon(f"{source.path.name} holds an API record")
                source.identities.state(record)
                _write(out, (_traincheck_state(record, source.last_data, source.stats),), source.stats)
            else:
                if record.get("type") == STATE:
                    raise _Abandon(f"{source.path.name} holds a state record")
                record = source.identities.api(record)
                if record.get("type") == "function_call (pre)":
                    self.calls[(record["process_id"], record.get("func_call_id"))] = (record.get("site"), record.get("parent_id"))
                source.thread.add(record, source.stats)
            step = (record.get("meta_vars") or {}).get("step")
            if type(step) is int and step > self.last_step.get(source.ids[0], -1):
                self.last_step[source.ids[0]] = step

    def _begin(self, source: _Source) -> None:
        """The identities of a file, guessed from the first records seen so far (checked in `finish`)."""
        identities = source.identities = _Identities([s.first for s in self.sources.values() if s.first is not None])
        source.ids = (identities.process(source.pid), identities.thread(source.pid, source.tid))
        if source.kind == "VAR" and any(s.kind == "VAR" and s.pid == source.pid and s is not source and s.first for s in self.sources.values()):
            raise _Abandon("a process with two state files")
        if source.kind == "API":
            source.out = self.api_out
            source.thread = _Thread(source.out, stream=True)
        else:
            source.out = _PlainFile(self.run_dir / f"trace_{source.kind}_{source.ids[0]}_{source.ids[1]}.log")

    def finish(self) -> ExportStats | None:
        """After the program ended, before seal() mends its files: the rest of every file, and the end marks; the
        export's statistics, or None (and no plain file left) when an assumption failed (`failed` says which)."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join()
        try:
            stats = None
            if self.poll(final=True):
                self._check_torn()
                stats = self._complete()
        except OSError as exc:  # reading a torn file, writing the end marks
            self.failed = self.failed or f"{exc.filename or 'a plain trace file'}: {exc.strerror}"
        finally:
            for out in self._outputs():
                try:
                    out.close()
                except OSError as exc:  # the last bytes could not be written (disk full, file too large)
                    self.failed = self.failed or f"{out.path.name}: {exc.strerror}"
        if self.failed is None:
            return stats
        self._remove_written()
        return None

    def _check_torn(self) -> None:
        """A file whose writer was killed ends torn: what was read of it must be what seal() will keep."""
        for source in self.sources.values():
            if source.torn and sum(piece.count(b"\n") for piece in _complete_lines(source.path)) != source.lines:
                self.failed = f"{source.path.name} is damaged before its end"

    def _complete(self) -> ExportStats | None:
        if self.failed is not None:
            return None
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
            _add(stats, source.stats)
        if stats.dropped_open_calls:
            self.failed = f"{stats.dropped_open_calls} calls were left open"
            return None
        written = [out for out in self._outputs() if out.file is not None]
        end = time.monotonic_ns()
        for out in written:
            out.mark(end, **{END_OF_TRACE: len(written)})
            out.flush()
        stats.files = len(written)
        return stats

    def _outputs(self) -> list[_PlainFile]:
        """The plain files begun, each once (every API file shares one)."""
        return list({id(s.out): s.out for s in self.sources.values() if s.out is not None}.values())

    def _remove_written(self) -> None:
        for out in self._outputs():
            if out.file is not None:
                out.path.unlink(missing_ok=True)

