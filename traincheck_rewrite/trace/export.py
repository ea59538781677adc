"""export_traincheck(): a run's trace as a folder TrainCheck's engine (`traincheck-infer -f`, `traincheck-check -f`)
reads as it is.

The engine wants plain JSON Lines (no compression, no blank or partial line), exactly one pre and one post record per
call with the same `meta_vars.stage` on both, and reads every file whose name starts with `trace_`. Our traces differ
in three ways that the export removes:
- compressed, possibly torn files: decompressed through `read_records`, which keeps every complete line;
- a call left open by a killed process (a pre record with no post) would make the engine silently drop the rest of
  that thread's trace: such calls are dropped and counted (the complete calls inside them are kept);
- a post record carries the stage at return time (a call that switches stage, like `model.eval()`), the engine
  needs the stage of its pre record: the post record gets the pre record's stage;
- a state record repeats a tensor's unchanged `data` hash when only its grad changed (after `backward`). The engine
  dates a value by its first record when it infers and by its last when it checks, so a repeat at a later step makes
  a cross-rank consistency check compare one rank's old weights with another's new ones at "the same step" (a false
  alarm that depends on rank timing): `data` is written only in the records where it changed.

Records are streamed: a thread's API records are held only while one of its calls is open, so memory stays bounded
by the largest top-level call, not by the trace.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from .reader import ReadStats, read_records, source_key, trace_sources

PRE = "function_call (pre)"
STATE = "state_change"


class ExportError(Exception):
    """A one-line reason the export could not be written."""


@dataclass
class ExportStats:
    records: int = 0  # records written
    files: int = 0  # trace files written
    dropped_open_calls: int = 0  # calls with a pre record and no post (process killed mid-call)
    unchanged_data_dropped: int = 0  # state records whose repeated `data` was left out
    stage_aligned_posts: int = 0  # post records whose stage was set to their pre record's
    truncated_files: list[str] = field(default_factory=list)  # source files that ended torn (read up to the tear)
    bad_lines: int = 0  # source lines that were not records


class _Thread:
    """One thread's API output: records held while a call is open, so that an unclosed call can be dropped."""

    def __init__(self, out):
        self.out = out
        self.open: dict = {}  # func_call_id -> [index of its pre record in held, its stage]
        self.held: list = []  # records (dicts, or None for a dropped pre) waiting for the outermost call to close

    def add(self, record: dict, stats: ExportStats) -> None:
        call = record.get("func_call_id")
        if record.get("type") == PRE:
            self.open[call] = [len(self.held), _stage(record)]
            self.held.append(record)
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
        self.held.append(record)
        if not self.open:
            self.flush(stats)

    def flush(self, stats: ExportStats) -> None:
        for index, _ in self.open.values():  # still open at the end of the trace
            self.held[index] = None
            stats.dropped_open_calls += 1
        self.open.clear()
        _write(self.out, (r for r in self.held if r is not None), stats)
        self.held = []


def _stage(record: dict):
    meta = record.get("meta_vars")
    return meta.get("stage") if isinstance(meta, dict) else None


def _write(out, records, stats: ExportStats) -> None:
    lines = [orjson.dumps(r) for r in records]
    if lines:
        out.write(b"\n".join(lines) + b"\n")
        stats.records += len(lines)


def export_traincheck(run_dir: str | Path | list, to: str | Path) -> ExportStats:
    """Write the trace of `run_dir` (or of several run folders of one job, one per node) into the new folder `to`
    (which may exist only if empty), one `trace_API_<pid>_<tid>.log` / `trace_VAR_<pid>_<tid>.log` per thread and
    kind, plus `export.json`. The folder appears complete or not at all."""
    folders = [Path(p) for p in run_dir] if isinstance(run_dir, (list, tuple)) else [Path(run_dir)]
    target = Path(to)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ExportError(f"{target}: already exists and is not an empty folder")
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


def _without_repeated_data(record: dict, last_data: dict, stats: ExportStats) -> dict:
    attributes = record.get("attributes")
    if not isinstance(attributes, dict) or "data" not in attributes:
        return record
    key = (record.get("process_id"), record.get("var_name"))
    data = attributes["data"]
    if key in last_data and last_data[key] == data:
        stats.unchanged_data_dropped += 1
        return {**record, "attributes": {k: v for k, v in attributes.items() if k != "data"}}
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
    stats = ExportStats()
    read = ReadStats()
    files: dict = {}  # (kind, pid, tid) -> open file
    threads: dict = {}  # (pid, tid) -> _Thread
    last_data: dict = {}  # (pid, var_name) -> the `data` of its last record
    try:
        _pids_apart(folders)
        records = (r for run_dir in folders for r in read_records(run_dir, stats=read))
        for record in records:
            is_state = record.get("type") == STATE
            key = ("VAR" if is_state else "API", record.get("process_id"), record.get("thread_id"))
            out = files.get(key)
            if out is None:
                out = files[key] = open(folder / f"trace_{key[0]}_{key[1]}_{key[2]}.log", "wb")
            if is_state:
                _write(out, (_without_repeated_data(record, last_data, stats),), stats)
                continue
            thread = threads.get(key[1:])
            if thread is None:
                thread = threads[key[1:]] = _Thread(out)
            thread.add(record, stats)
        for thread in threads.values():
            thread.flush(stats)
    finally:
        for out in files.values():
            out.close()
    for key, out in files.items():
        if os.path.getsize(out.name) == 0:  # every record of it was a dropped open call
            os.unlink(out.name)
    stats.files = sum(1 for p in folder.iterdir() if p.name.startswith("trace_"))
    stats.truncated_files, stats.bad_lines = read.truncated_files, read.bad_lines
    return stats
