"""export_traincheck(): a run's trace as a folder TrainCheck's engine (`traincheck-infer -f`, `traincheck-check -f`)
reads as it is.

The engine wants plain JSON Lines (no compression, no blank or partial line), exactly one pre and one post record per
call with the same `meta_vars.stage` on both, and reads every file whose name starts with `trace_`. Our traces differ
in three ways that the export removes:
- compressed, possibly torn files: decompressed through `read_file`, which keeps every complete line;
- a call left open by a killed process (a pre record with no post) would make the engine silently drop the rest of
  that thread's trace: such calls are dropped and counted (the complete calls inside them are kept);
- a call of a function made directly inside a call of the same function on the same object (a decorator's wrapper
  calling what it wraps, seen with library depth: `SGD.step` three times per step) is merged into the outer call,
  as TrainCheck's collector, wrapping the outermost only, records one (the runtime logs such calls once since
  this version; traces written before it still hold them);
- a post record carries the stage at return time (a call that switches stage, like `model.eval()`), the engine
  needs the stage of its pre record: the post record gets the pre record's stage;
- a state record repeats a tensor's unchanged `data` hash when only its grad changed (after `backward`). The engine
  dates a value by its first record when it infers and by its last when it checks, so a repeat at a later step makes
  a cross-rank consistency check compare one rank's old weights with another's new ones at "the same step" (a false
  alarm that depends on rank timing): `data` is written only in the records where it changed.

It also writes what TrainCheck's collector writes, in values that do not change from one run of a program to the
next (the engine builds preconditions from record fields, so an OS id or an address in one would make an invariant
that no other run can satisfy):
- `process_id` is the rank (`meta_vars.rank`, even where a process learns it after its first calls, as `mp.spawn`
  ranks do) or, without one, the order of appearance after the ranks (a parent that only spawns); `thread_id` the
  thread's order of appearance in its process (0: the first thread that wrote); file names, `func_call_id` and
  `parent_id` follow (`obj_id` stays `id(self)`: the engine groups calls by it, never compares it across runs);
- functions are named as TrainCheck's collector names them, where its engine's filters go by the name: tensor
  methods `torch._C.TensorBase.<name>`, the C functions of `torch._C._VariableFunctions` (`torch.flatten`,
  `torch.randn`) `torch._VariableFunctionsClass.<name>`, which traincheck 0.2.0 leaves out of its relations (the
  runtime says `torch.Tensor.<name>` and `torch.<name>`, the names users know);
- a tensor's envelope gets `_TRAINCHECK_data_ID`, the data id the runtime writes beside it (its storage's order of
  appearance in its process): the same tensor twice has one id, two tensors alike have two;
- lists, tuples and dicts are written as TrainCheck's collector writes them (plain JSON when they hold only
  primitives; else a dict keeps its primitive values, a list nothing), so that an argument an invariant names matches;
- state records get `itemsize` and `nbytes`, as in argument envelopes, and their data and grad identities as
  `_TRAINCHECK_data_ID` and `_TRAINCHECK_grad_ID` (numbers the tracker gives, not addresses: model-tracking.md),
  and `data` only where it changed (`_traincheck_state` says why);

The API records of every process and thread of the job go into one file, `trace_API_all.log`, step by step: a
step's records of process 0, then of process 1, ..., each process's in the order they were made (a thread's held
block, below, where its outermost call closes). The engine reads the order of the file in two places. Contain
inference takes a function's calls in that order and, past the first and last ten, prunes those whose contents repeat
the calls before them: with a file per process, rank 1's first calls come in the middle and are pruned, so an
exemption every rank's first call needs (`zero_grad` before any gradient exists) is learnt as "process 0 at step 1"
and rank 1's first call violates it on every healthy run. And Lead/Cover leave out a function with more than four
records in a row: in plain time order, a collective that every rank calls at once (`all_reduce`) stands next to the
other ranks' calls of it, and is left out. State records stay in a file per process (the engine orders them by time
itself).

Records are streamed: a thread's API records are held only while one of its calls is open, so memory stays bounded
by the largest top-level call, not by the trace. State records go to files of their own, so a run with many of them
has them exported by a second process while this one exports the API records (the export after `tc-rewrite`'s
run is on the user's wait; the two share only the identities, computed first).
"""

from __future__ import annotations

import heapq
import os
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from ..outputs import NO_PLAIN_TRACES, OutputPathError, check_folder_target
from .reader import ReadStats, read_file, source_key, trace_sources
from .torch_functions import VARIABLE_FUNCTIONS

PRE = "function_call (pre)"
STATE = "state_change"
RUNTIME_TENSOR_METHOD = "torch.Tensor."  # what the runtime calls methods of torch's C tensor class
TRAINCHECK_TENSOR_METHOD = "torch._C.TensorBase."  # what TrainCheck's collector calls them
TRAINCHECK_VARIABLE_FUNCTION = "torch._VariableFunctionsClass."  # its name for torch.flatten & co (VARIABLE_FUNCTIONS)
DATA_ID = "_TRAINCHECK_data_ID"
GRAD_ID = "_TRAINCHECK_grad_ID"
WRITE_BUFFER = 1 << 20
PARALLEL_STATE_BYTES = 256 << 10  # compressed state records worth exporting in a second process (~0.1 s to start)
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
API_FILE = "trace_API_all.log"  # the job's API records, every process and thread, step by step
CALL_ID_BASE = 10**9  # func_call_id = process_id * CALL_ID_BASE + n
RANK_LOOKAHEAD = 10_000  # records of a process read to find its rank when its first records have none
_ITEMSIZE = {
    "torch.float64": 8, "torch.float32": 4, "torch.float16": 2, "torch.bfloat16": 2, "torch.complex128": 16,
    "torch.complex64": 8, "torch.complex32": 4, "torch.int64": 8, "torch.int32": 4, "torch.int16": 2, "torch.int8": 1,
    "torch.uint8": 1, "torch.uint16": 2, "torch.uint32": 4, "torch.uint64": 8, "torch.bool": 1,
    "torch.float8_e4m3fn": 1, "torch.float8_e5m2": 1, "torch.float8_e4m3fnuz": 1, "torch.float8_e5m2fnuz": 1,
    "torch.qint8": 1, "torch.quint8": 1, "torch.qint32": 4,
}  # fmt: skip


def traincheck_function_name(name: str) -> str:
    """The name TrainCheck's collector gives a function the runtime names `name` (its engine's filters go by it)."""
    if name.startswith(RUNTIME_TENSOR_METHOD):
        return TRAINCHECK_TENSOR_METHOD + name[len(RUNTIME_TENSOR_METHOD):]
    if name.startswith("torch.") and name[6:] in VARIABLE_FUNCTIONS:
        return TRAINCHECK_VARIABLE_FUNCTION + name[6:]
    return name


class _Identities:
    """Process, thread, object and tensor identities that a rerun of the program gives again."""

    def __init__(self, first_records: list[dict]) -> None:
        starts: dict = {}  # pid -> time of its first record
        ranked: dict = {}  # pid -> rank
        thread_starts: dict = {}  # (pid, tid) -> time of its first record
        for r in first_records:
            pid, tid, time = r.get("process_id"), r.get("thread_id"), r.get("time", 0)
            starts[pid] = min(time, starts.get(pid, time))
            thread_starts[(pid, tid)] = min(time, thread_starts.get((pid, tid), time))
            rank = _rank(r)
            if rank is not None:
                ranked[pid] = rank
        unranked = sorted((t, pid) for pid, t in starts.items() if pid not in ranked)
        next_id = max(ranked.values(), default=-1) + 1
        self.processes = dict(ranked)
        for i, (_, pid) in enumerate(unranked):
            self.processes[pid] = next_id + i
        self.threads: dict = {}
        for (pid, tid), _ in sorted(thread_starts.items(), key=lambda item: (self.processes[item[0][0]], item[1])):
            self.threads[(pid, tid)] = sum(1 for key in self.threads if key[0] == pid)
        self._ids: dict = {}  # (pid, tid) -> what _of gives

    def to_json(self) -> dict:
        return {"processes": list(self.processes.items()), "threads": [[*key, n] for key, n in self.threads.items()]}

    @classmethod
    def from_json(cls, data: dict) -> _Identities:
        identities = cls([])
        identities.processes = {pid: n for pid, n in data["processes"]}
        identities.threads = {(pid, tid): n for pid, tid, n in data["threads"]}
        return identities

    def process(self, pid):
        if pid not in self.processes:  # a process whose files could not be read ahead
            self.processes[pid] = max(self.processes.values(), default=-1) + 1
        return self.processes[pid]

    def thread(self, pid, tid):
        if (pid, tid) not in self.threads:
            self.threads[(pid, tid)] = sum(1 for key in self.threads if key[0] == pid)
        return self.threads[(pid, tid)]

    def _of(self, pid, tid) -> tuple:
        """(stable process id, stable thread id, first call id of the pid's range or None, shift of a call id)."""
        ids = self._ids.get((pid, tid))
        if ids is None:
            stable = self.process(pid)
            first = pid * CALL_ID_BASE if type(pid) is int else None
            ids = self._ids[(pid, tid)] = (stable, self.thread(pid, tid), first, (stable - pid) * CALL_ID_BASE if first is not None else 0)
        return ids

    def api(self, record: dict) -> dict:
        """The record as TrainCheck's collector would write it (changed in place: records are read fresh)."""
        stable, thread, first, shift = self._of(record.get("process_id"), record.get("thread_id"))
        record["process_id"], record["thread_id"] = stable, thread
        if first is not None:
            for key in ("func_call_id", "parent_id"):
                value = record.get(key)
                if type(value) is int and first <= value < first + CALL_ID_BASE:
                    record[key] = value + shift
        name = record.get("function")
        if type(name) is str:
            record["function"] = traincheck_function_name(name)
        for key in ("args", "kwargs"):
            values = record.get(key)
            if type(values) is dict:
                for k, v in values.items():
                    values[k] = _traincheck_value(v)
        if "return_values" in record:
            record["return_values"] = _traincheck_value(record["return_values"])
        return record

    def state(self, record: dict) -> dict:
        stable, thread, _, _ = self._of(record.get("process_id"), record.get("thread_id"))
        record["process_id"], record["thread_id"] = stable, thread
        attributes = record.get("attributes")
        if type(attributes) is dict and "nbytes" not in attributes and type(attributes.get("numel")) is int:
            itemsize = _ITEMSIZE.get(attributes.get("dtype"))
            if itemsize is not None:
                attributes["itemsize"], attributes["nbytes"] = itemsize, itemsize * attributes["numel"]
        return record


_PRIMITIVE_TYPES = ("int", "float", "str", "bool", "NoneType")
_NOT_RAW = object()


def _raw(value):
    """The plain JSON value an envelope of primitives stands for (TrainCheck's collector writes a JSON-serialisable
    argument as it is, `{"list": [1, 2]}`), or _NOT_RAW."""
    if not isinstance(value, dict) or len(value) != 1:
        return _NOT_RAW
    ((tname, payload),) = value.items()
    if tname in _PRIMITIVE_TYPES:
        return payload
    if tname in ("list", "tuple") and isinstance(payload, list):
        items = [_raw(v) for v in payload]
        return _NOT_RAW if any(v is _NOT_RAW for v in items) else items
    if tname == "dict" and isinstance(payload, dict) and "..." not in payload:
        items = {k: _raw(v) for k, v in payload.items()}
        return _NOT_RAW if any(v is _NOT_RAW for v in items.values()) else items
    return _NOT_RAW


def _traincheck_value(value):
    """An envelope as TrainCheck's collector writes it: a tensor's data id in its payload as `_TRAINCHECK_data_ID`;
    a list, tuple or dict of primitives as plain JSON; otherwise a dict keeps its primitive values (and a tensor
    value's data id as `_TRAINCHECK_<key>_ID`) and a list or tuple keeps nothing, as its attribute dump would."""
    if type(value) is list:  # several return values
        return [_traincheck_value(v) for v in value]
    if type(value) is not dict:
        return value
    if len(value) == 2 and "data_id" in value:  # a tensor: its payload gets the id (in place)
        data_id = value.pop("data_id")
        payload = next(iter(value.values()))
        if type(payload) is dict:
            payload[DATA_ID] = data_id
        return value
    if len(value) != 1:
        return value
    ((tname, payload),) = value.items()
    if tname not in ("list", "tuple", "dict"):
        return value
    raw = _raw(value)
    if raw is not _NOT_RAW:
        return {tname: raw}
    if tname != "dict" or not isinstance(payload, dict):
        return {tname: {}}
    kept = {}
    for key, item in payload.items():
        plain = _raw(item) if isinstance(item, dict) and next(iter(item), None) in _PRIMITIVE_TYPES else _NOT_RAW
        if plain is not _NOT_RAW:
            kept[key] = plain
        elif isinstance(item, dict) and "data_id" in item:
            kept[f"_TRAINCHECK_{key}_ID"] = item["data_id"]
    return {tname: kept}


def _first_records(run_dir: Path) -> list[dict]:
    """The first record of each trace source (a process killed before its first flush has only a spill file): who
    wrote it, when it began, with which rank. A process none of whose first records has a rank (an `mp.spawn` rank
    makes calls before `init_process_group` tells it its rank) adds its first record with one, looked for in its
    first RANK_LOOKAHEAD records: so a rank is its `process_id` whoever launched it, and a parent that only spawns
    comes after the ranks."""
    out = []
    firsts = []
    for path in trace_sources(run_dir):
        record = next(read_file(path, ReadStats()), None)
        if record is not None:
            out.append(record)
            firsts.append((path, record))
    ranked = {r.get("process_id") for r in out if _rank(r) is not None}
    for path, first in firsts:
        pid = first.get("process_id")
        if pid in ranked:
            continue
        for n, record in enumerate(read_file(path, ReadStats())):
            if n >= RANK_LOOKAHEAD:
                break
            if _rank(record) is not None:
                out.append(record)
                ranked.add(pid)
                break
    return out


def _rank(record: dict) -> int | None:
    rank = (record.get("meta_vars") or {}).get("rank")
    return rank if isinstance(rank, int) and not isinstance(rank, bool) else None


class ExportError(Exception):
    """A one-line reason the export could not be written."""


@dataclass
class ExportStats:
    records: int = 0  # records written
    files: int = 0  # trace files written
    dropped_open_calls: int = 0  # calls with a pre record and no post (process killed mid-call)
    stage_aligned_posts: int = 0  # post records whose stage was set to their pre record's
    unchanged_data_dropped: int = 0  # state records whose repeated `data` was left out (_traincheck_state)
    repeated_calls_merged: int = 0  # calls of a function made directly inside a call of it on the same object
    truncated_files: list[str] = field(default_factory=list)  # source files that ended torn (read up to the tear)
    bad_lines: int = 0  # source lines that were not records


class _Thread:
    """One thread's API output: records held while a call is open, so that an unclosed call can be dropped; or, when
    `stream` (the live export, trace/live.py), written at once, and a call still open at the end only counted."""

    def __init__(self, out, stream: bool = False):
        self.out = out
        self.stream = stream
        self.open: dict = {}  # func_call_id -> [index of its pre record in held, its stage, function, obj_id]
        self.held: list = []  # records (dicts, or None for a dropped pre) waiting for the outermost call to close
        self.merged: dict = {}  # func_call_id of a merged inner call -> the call it was merged into

    def add(self, record: dict, stats: ExportStats) -> None:
        call = record.get("func_call_id")
        if record.get("type") == PRE:
            parent = self.merged.get(record.get("parent_id"), record.get("parent_id"))
            outer = self.open.get(parent)
            if outer is not None and outer[2:] == [record.get("function"), record.get("obj_id")]:
                # a decorator's wrapper calling the function it wraps (torch.optim's step is wrapped twice): one call
                # to TrainCheck's collector, which wraps the outermost only
                self.merged[call] = parent
                stats.repeated_calls_merged += 1
                return
            if parent != record.get("parent_id"):
                record["parent_id"] = parent
            self.open[call] = [len(self.held), _stage(record), record.get("function"), record.get("obj_id")]
            self._keep(record, stats)
            return
        if self.merged.pop(call, None) is not None:
            return
        opened = self.open.pop(call, None)
        if opened is None:  # a post with no pre (cannot happen in our traces): the engine would reject it
            return
        if _stage(record) != opened[1]:
            meta = record["meta_vars"] = dict(record.get("meta_vars") or {})
            if opened[1] is None:
                meta.pop("stage", None)
            else:
                meta["stage"] = opened[1]
            stats.stage_aligned_posts += 1
        self._keep(record, stats)
        if not self.open and not self.stream:
            self.flush(stats)

    def _keep(self, record: dict, stats: ExportStats) -> None:
        if self.stream:
            _write(self.out, (record,), stats)
        else:
            self.held.append(record)

    def flush(self, stats: ExportStats) -> None:
        for index, *_ in self.open.values():  # still open at the end of the trace
            if not self.stream:
                self.held[index] = None
            stats.dropped_open_calls += 1
        self.open.clear()
        _write(self.out, (r for r in self.held if r is not None), stats)
        self.held = []


def _stage(record: dict):
    meta = record.get("meta_vars")
    return meta.get("stage") if isinstance(meta, dict) else None


def _write(out, records, stats: ExportStats) -> None:
    for r in records:
        out.write(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE))
        stats.records += 1


def export_traincheck(run_dir: str | Path | list, to: str | Path) -> ExportStats:
    """Write the trace of `run_dir` (or of several run folders of one job, one per node) into the new folder `to`
    (which may exist only if empty): `trace_API_all.log`, one `trace_VAR_<pid>_<tid>.log` per thread that has state
    records, and `export.json`. The folder appears complete or not at all."""
    folders = [Path(p) for p in run_dir] if isinstance(run_dir, (list, tuple)) else [Path(run_dir)]
    try:
        target = check_folder_target(to)
    except OutputPathError as exc:
        raise ExportError(str(exc)) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        stats = _export_into(folders, staging)
        sources = [str(f.resolve()) for f in folders]
        (staging / "export.json").write_bytes(
            orjson.dumps({"format": "traincheck", "source": sources[0] if len(sources) == 1 else sources, **asdict(stats)},
                         option=orjson.OPT_INDENT_2)
        )
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return stats


def export_beside(run_dir: str | Path) -> ExportStats:
    """Write the plain traces into the run folder itself, next to `traces/`, where TrainCheck's collector leaves
    them (`traincheck-infer -f RUN`). Written aside and moved in, so a trace file in the folder is always whole."""
    folder = Path(run_dir)
    staging = folder / f".plain_traces.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        stats = _export_into([folder], staging)
        for path in sorted(staging.iterdir()):
            os.replace(path, folder / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return stats


def plain_traces_missing(run_dir: str | Path) -> bool:
    """Whether `tc-rewrite` was stopped (or is still running) before it wrote the run folder's plain traces: its
    marker, written when the program starts, is still there."""
    return (Path(run_dir) / NO_PLAIN_TRACES).is_file()


def export_in_place(run_dir: str | Path) -> ExportStats:
    """The plain traces written into the run folder itself (`trace export RUN --in-place`), as `tc-rewrite` writes
    them when the program ends: for a run whose `tc-rewrite` was stopped before it could. Plain traces already there
    are refused, unless the marker says they are a stopped run's unfinished set (then they are replaced)."""
    folder = Path(run_dir)
    plain = sorted(p for p in folder.iterdir() if p.name.startswith("trace_") and p.is_file())
    if plain and not plain_traces_missing(folder):
        raise ExportError(f"{run_dir}: already holds its plain traces ({plain[0].name}, ...); --to DIR writes them elsewhere")
    for path in plain:
        path.unlink()
    stats = export_beside(folder)
    (folder / NO_PLAIN_TRACES).unlink(missing_ok=True)
    return stats


def _traincheck_state(record: dict, last_data: dict, stats: ExportStats) -> dict:
    """A state record as TrainCheck's collector writes it (in place): the data and grad identities as
    `_TRAINCHECK_data_ID` and `_TRAINCHECK_grad_ID`, and `data` only where it differs from the variable's last record.
    The engine skips a missing value (NaN) and merges a value's records; it infers consistency from a value's first
    record but checks each value's last one: with the data repeated in the next step's records (after zero_grad and
    backward), a rank whose optimizer step ran late would hold last step's value in a record of this step, beside the
    other rank's new value of this step and the same grad, and a healthy job would fail "Parameter.data stays
    consistent" (seen on ddp_desync's healthy rerun: docs/bug-detection.md)."""
    attributes = record.get("attributes")
    if type(attributes) is not dict:
        return record
    if "data_id" in attributes:
        attributes[DATA_ID] = attributes.pop("data_id")
        attributes[GRAD_ID] = attributes.pop("grad_id", 0)
    if "data" in attributes:
        key = (record.get("process_id"), record.get("var_name"))
        data = attributes["data"]
        if key in last_data and last_data[key] == data:
            stats.unchanged_data_dropped += 1
            del attributes["data"]
        else:
            last_data[key] = data
    return record


def _pids_apart(folders: list[Path]) -> None:
    """Two nodes' processes with the same pid would share one file name: refuse (pids repeat across machines rarely)."""
    seen: dict = {}
    for f in folders:
        for path in trace_sources(f):
            key = source_key(path)
            if key is not None and seen.setdefault(key[1], f) != f:
                raise ExportError(f"pid {key[1]} is in both {seen[key[1]]} and {f}: export them one at a time")


def _export_into(folders: list[Path], folder: Path) -> ExportStats:
    """API records here and, when there are enough of them to pay for a second process, state records in one beside
    it (`_state_worker`): the two kinds go to different files and share nothing but the identities."""
    _pids_apart(folders)
    identities = _Identities([r for f in folders for r in _first_records(f)])
    state_bytes = sum(p.stat().st_size for f in folders for p in trace_sources(f, ("VAR",)))
    worker = _start_state_worker(folders, folder, identities) if state_bytes >= PARALLEL_STATE_BYTES else None
    try:
        stats = _export_kinds(folders, folder, identities, ("API",) if worker is not None else ("API", "VAR"))
    except BaseException:
        if worker is not None:
            worker.kill()
            worker.wait()
        raise
    if worker is not None:
        _add(stats, _finish_state_worker(worker))
    stats.files = sum(1 for p in folder.iterdir() if p.name.startswith("trace_"))
    return stats


def _export_kinds(folders: list[Path], folder: Path, identities: _Identities, kinds: tuple[str, ...]) -> ExportStats:
    stats = ExportStats()
    read = ReadStats()
    files: dict = {}  # (kind, pid, tid) -> open file
    threads: dict = {}  # (pid, tid) -> _Thread
    last_data: dict = {}  # (pid, var_name) -> the `data` of its last record
    try:
        files_read = [read_file(p, read) for run_dir in folders for p in trace_sources(run_dir, kinds)]
        for record in heapq.merge(*files_read, key=lambda r: step_order(r, identities.process(r.get("process_id")))):
            is_state = record.get("type") == STATE
            record = identities.state(record) if is_state else identities.api(record)
            pid, tid = record.get("process_id"), record.get("thread_id")
            name = f"trace_VAR_{pid}_{tid}.log" if is_state else API_FILE
            out = files.get(name)
            if out is None:
                out = files[name] = open(folder / name, "wb", buffering=WRITE_BUFFER)
            if is_state:
                _write(out, (_traincheck_state(record, last_data, stats),), stats)
                continue
            thread = threads.get((pid, tid))
            if thread is None:
                thread = threads[(pid, tid)] = _Thread(out)
            thread.add(record, stats)
        for thread in threads.values():
            thread.flush(stats)
    finally:
        for out in files.values():
            out.close()
    for key, out in files.items():
        if os.path.getsize(out.name) == 0:  # every record of it was a dropped open call
            os.unlink(out.name)
    stats.truncated_files, stats.bad_lines = read.truncated_files, read.bad_lines
    return stats


def step_order(record: dict, process: int) -> tuple:
    """Where a record goes in the job's API file: by step, then process, then time (each thread's file is in this
    order already, so merging them keeps every thread's order)."""
    meta = record.get("meta_vars")
    step = meta.get("step") if type(meta) is dict else None
    return (step if type(step) is int else 0, process, made_at(record))


def made_at(record: dict) -> int:
    when = record.get("time")
    return when if type(when) is int else 0


def _add(stats: ExportStats, other: ExportStats) -> None:
    for name, value in asdict(other).items():
        if name != "files":
            setattr(stats, name, sorted(getattr(stats, name) + value) if isinstance(value, list) else getattr(stats, name) + value)


def _start_state_worker(folders: list[Path], folder: Path, identities: _Identities) -> subprocess.Popen:
    job = orjson.dumps({"folders": [str(f) for f in folders], "folder": str(folder), "identities": identities.to_json()})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), PACKAGE_PARENT) if p)}
    return subprocess.Popen(
        [sys.executable, "-c", "from traincheck_rewrite.trace.export import _state_worker; _state_worker()", job.decode()],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip


def _finish_state_worker(worker: subprocess.Popen) -> ExportStats:
    out, err = worker.communicate()
    if worker.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise ExportError(f"the state records could not be exported: {lines[-1] if lines else f'exit code {worker.returncode}'}")
    return ExportStats(**orjson.loads(out))


def _state_worker() -> None:
    """The second process of `_export_into`: the state records of the job given as its argument; its stats to
    stdout."""
    job = orjson.loads(sys.argv[1])
    identities = _Identities.from_json(job["identities"])
    stats = _export_kinds([Path(f) for f in job["folders"]], Path(job["folder"]), identities, ("VAR",))
    sys.stdout.buffer.write(orjson.dumps(asdict(stats)))
