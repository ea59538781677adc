"""export_chrome(): a job's trace as a Trace Event Format file (JSON, gzip when the name ends in .gz) that Perfetto's
UI, chrome://tracing and VizTracer's vizviewer open.

Tracks: one process per traced process, named "rank R (pid P)" (or "pid P"), its export pid the real pid P (a
number above every pid where two run folders share one), sorted by rank; in each, the main thread (tid = pid, as on
Linux, so viewers mark it the main thread), then a "steps" track with one slice per training step, then the other
threads; a thread track holds every logged call as a complete slice ("X", category "call"), nested as the calls
nested, with stage changes and state changes as instant events; a "records per step" counter. The steps track and
the other threads get tids above every pid of the export, so no two tracks share one. Sort-index metadata orders
processes and threads for viewers that read it (chrome://tracing; Perfetto's UI orders processes by event count,
then name). A run checked with `tc-rewrite --check` has each violation as an instant
event (category "violation") on the thread whose record showed it.

Times: records carry `time.monotonic_ns()`, one clock per machine shared by its processes, so the processes of one
run folder keep their relative times: ts = (time - the folder's earliest record) in microseconds. Several run
folders (nodes) are placed by their run.json `started` wall-clock time, to the second.

The file is written as the records stream by: a thread's open calls (its call stack) and per process a step table
and each variable's last attribute digests are all that is held, so memory does not grow with the trace.
"""

from __future__ import annotations

import gzip
import itertools
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import orjson

from ..outputs import OutputPathError, check_file_target
from .job import Job, Process, RunFolder
from .reader import ReadStats
from .verdict import place

PRE = "function_call (pre)"
EXCEPTION = "function_call (post) (exception)"
STATE = "state_change"
ARG_CHARS = 500  # an argument envelope longer than this is cut (the UI holds every arg of every slice)
VIOLATION_NAME_CHARS = 80  # of the invariant's text in a violation's event name (its args hold it whole)


class ChromeExportError(Exception):
    """A one-line reason the export could not be written."""


@dataclass
class ChromeStats:
    processes: int = 0
    threads: int = 0
    slices: int = 0  # logged calls written as slices
    unfinished: int = 0  # of them, calls with no post record (process killed): their slice ends at the thread's last record
    instants: int = 0
    violations: int = 0  # violations of `tc-rewrite --check` (instant events too, not counted in `instants`)
    steps: int = 0
    records: int = 0  # records read


def _meta(record: dict) -> dict:
    meta = record.get("meta_vars")
    return meta if isinstance(meta, dict) else {}


def _step(record: dict):
    step = _meta(record).get("step")
    return step if type(step) is int else None


def _cut(value) -> str:
    text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    return text if len(text) <= ARG_CHARS else text[: ARG_CHARS - 3] + "..."


def _dur(begin, end) -> float:
    """Microseconds from one record time (ns) to another, exact to the ns (ts + dur of a child stays inside)."""
    return max(end - begin, 0) / 1000 if type(begin) is int and type(end) is int else 0.0


def _started(run: RunFolder) -> float | None:
    started = run.run_info().get("started")
    try:
        return datetime.fromisoformat(started).timestamp() if isinstance(started, str) else None
    except ValueError:
        return None


class _Writer:
    """The event list, written as it grows: `{"traceEvents":[` event, event, ... `],...}`."""

    def __init__(self, out):
        self.out, self.buf, self.first = out, [], True
        out.write(b'{"traceEvents":[\n')

    def event(self, e: dict) -> None:
        self.buf.append(orjson.dumps(e))
        if len(self.buf) >= 4096:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.out.write((b"" if self.first else b",\n") + b",\n".join(self.buf))
            self.first, self.buf = False, []

    def close(self, other: dict) -> None:
        self.flush()
        self.out.write(b'\n],"displayTimeUnit":"ns","otherData":' + orjson.dumps(other) + b"}\n")


class _Export:
    def __init__(self, job: Job, writer: _Writer, steps: tuple[int, int] | None, stats: ChromeStats):
        self.job, self.w, self.steps, self.stats = job, writer, steps, stats
        self.read = ReadStats()
        started = {id(run): _started(run) for run in job.runs}
        known = [s for s in started.values() if s is not None]
        self.origin: dict = {}  # id(run) -> (earliest record time, offset in us)
        self.tracks: dict = {}  # id(process) -> (its export pid, the tid of each of its threads, in order)
        for run in job.runs:
            times = [s.first_time for p in job.processes if p.run is run for s in p.sources if s.first_time is not None]
            wall = started[id(run)]
            offset = (wall - min(known)) * 1e6 if wall is not None and len(job.runs) > 1 else 0.0
            self.origin[id(run)] = (min(times) if times else 0, offset)

    def keep(self, step) -> bool:
        return self.steps is None or (step is not None and self.steps[0] <= step <= self.steps[1])

    def process(self, p: Process, pid: int, order: int, tids) -> None:
        """Write `p` as process `pid` (the `order`-th, by rank); `tids` hands out its steps and other threads' tids."""
        t0, offset = self.origin[id(p.run)]
        self.run = p.run

        def ts(t) -> float:
            return (t - t0) / 1000 + offset if type(t) is int else offset

        w, stats = self.w, self.stats
        stats.processes += 1
        w.event({"ph": "M", "name": "process_name", "pid": pid, "args": {"name": p.label}})
        w.event({"ph": "M", "name": "process_sort_index", "pid": pid, "args": {"sort_index": order}})
        threads = p.threads()
        steps_tid = next(tids)
        thread_tids = [pid] + [next(tids) for _ in threads[1:]]  # the main thread's tid is the pid, as on Linux
        self.tracks[id(p)] = (pid, thread_tids)
        w.event({"ph": "M", "name": "thread_name", "pid": pid, "tid": steps_tid, "args": {"name": "steps"}})
        w.event({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": steps_tid, "args": {"sort_index": 1}})
        step_spans: dict = {}  # step -> [first time, last time, records]
        last_attrs: dict = {}  # var_name -> {attribute: digest of its value}
        for n, (tid, track) in enumerate(zip(threads, thread_tids), 1):
            stats.threads += 1
            name = "main thread" if n == 1 else f"thread {n}"
            w.event({"ph": "M", "name": "thread_name", "pid": pid, "tid": track, "args": {"name": name}})
            w.event({"ph": "M", "name": "thread_sort_index", "pid": pid, "tid": track,
                     "args": {"sort_index": 0 if n == 1 else n}})
            last_time = None
            stack: list = []  # open calls: (func_call_id, pre record)
            stage = None
            for source in p.sources_of("API", tid):
                for r in source.records(self.read):
                    stats.records += 1
                    t = r.get("time")
                    if type(t) is int:
                        last_time = t
                    step = _step(r)
                    self._count(step_spans, step, t)
                    if r.get("type") == PRE:
                        stack.append((r.get("func_call_id"), r))
                        new_stage = _meta(r).get("stage")
                        if new_stage != stage and self.keep(step):
                            w.event({"ph": "i", "s": "t", "name": f"stage: {new_stage}", "cat": "stage", "pid": pid,
                                     "tid": track, "ts": ts(t),
                                     "args": {"stage": new_stage, "from": stage, "step": step}})
                            stats.instants += 1
                        stage = new_stage
                        continue
                    call = r.get("func_call_id")
                    for i in range(len(stack) - 1, -1, -1):
                        if stack[i][0] == call:
                            pre = stack[i][1]
                            del stack[i:]  # calls opened inside and never closed end with it (cannot happen)
                            self._slice(pid, track, ts, pre, r, t)
                            break
            for _, pre in reversed(stack):  # killed inside these calls
                self._slice(pid, track, ts, pre, None, last_time)
            for source in p.sources_of("VAR", tid):
                for r in source.records(self.read):
                    stats.records += 1
                    step = _step(r)
                    self._count(step_spans, step, r.get("time"))
                    self._state(pid, track, ts, r, step, last_attrs)
        self._steps(pid, steps_tid, ts, step_spans)

    @staticmethod
    def _count(spans: dict, step, t) -> None:
        span = spans.get(step)
        if span is None:
            spans[step] = [t, t, 1] if type(t) is int else [None, None, 1]
            return
        span[2] += 1
        if type(t) is int:
            if span[0] is None or t < span[0]:
                span[0] = t
            if span[1] is None or t > span[1]:
                span[1] = t

    def _slice(self, pid: int, tid: int, ts, pre: dict, post: dict | None, end) -> None:
        step = _step(pre)
        if not self.keep(step):
            return
        site = self.run.site(pre.get("site"))
        args = {"site": site["where"], "step": step, "stage": _meta(pre).get("stage"),
                "args": _cut(pre.get("args")), "kwargs": _cut(pre.get("kwargs"))}
        if post is None:
            args["unfinished"] = True
            self.stats.unfinished += 1
        elif post.get("type") == EXCEPTION:
            args["exception"] = f"{post.get('exception')}: {post.get('exception_msg')}"
        else:
            args["return"] = _cut(post.get("return_values"))
        args["call_id"], args["parent_id"] = pre.get("func_call_id"), pre.get("parent_id")
        self.w.event({"ph": "X", "cat": "call", "name": str(pre.get("function")), "pid": pid, "tid": tid,
                      "ts": ts(pre.get("time")), "dur": _dur(pre.get("time"), end), "args": args})
        self.stats.slices += 1

    def _state(self, pid, tid, ts, r: dict, step, last_attrs: dict) -> None:
        name = r.get("var_name")
        attributes = r.get("attributes") if isinstance(r.get("attributes"), dict) else {}
        digests = {k: hash(orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS)) for k, v in attributes.items()}
        before = last_attrs.get(name, {})
        changed = sorted(k for k, v in digests.items() if before.get(k) != v) if before else ["(first record)"]
        last_attrs[name] = digests
        if not self.keep(step):
            return
        self.w.event({"ph": "i", "s": "t", "cat": "state", "name": f"state: {name}", "pid": pid, "tid": tid,
                      "ts": ts(r.get("time")), "args": {"var": name, "changed": changed, "mode": r.get("mode"),
                                                        "dump_loc": r.get("dump_loc"), "step": step,
                                                        "stage": _meta(r).get("stage")}})
        self.stats.instants += 1

    def _steps(self, pid: int, tid: int, ts, spans: dict) -> None:
        timed = sorted((span[0], step, span) for step, span in spans.items() if span[0] is not None)
        for i, (first, step, span) in enumerate(timed):
            if not self.keep(step):
                continue
            end = span[1]
            if i + 1 < len(timed):
                end = min(end, timed[i + 1][0])  # slices on one track must not overlap
            label = "no step" if step is None else f"step {step}"
            self.w.event({"ph": "X", "cat": "step", "name": label, "pid": pid, "tid": tid, "ts": ts(first),
                          "dur": _dur(first, end), "args": {"step": step, "records": span[2]}})
            self.w.event({"ph": "C", "name": "records per step", "pid": pid, "ts": ts(first),
                          "args": {"records": span[2]}})
            self.stats.steps += 1


def _track_ids(processes: list[Process]):
    """Each process's export pid (its own pid; a number above all of them where two run folders share a pid) and an
    iterator of tids above every pid, for the tracks that are not a process's main thread."""
    top = max((p.pid for p in processes), default=0)
    pids: list[int] = []
    for p in processes:
        if p.pid in pids:
            top += 1
        pids.append(top if p.pid in pids else p.pid)
    return pids, itertools.count(top + 1)


def _violation_events(job: Job, processes: list[Process], tracks: dict, origin: dict, steps: tuple[int, int] | None):
    """An instant event per violation of the checked run folders, on the track of the thread whose record showed it
    (the process's main thread when that thread is unknown; a violation of no traced process goes to the first
    process of its folder, unless ranks were chosen), at the same time base as the records."""
    firsts = {}  # id(run) -> its first exported process
    for p in processes:
        firsts.setdefault(id(p.run), p)
    whole_job = len(processes) == len(job.processes)
    for run, violation, process, thread in place(job, None if whole_job else processes):
        step = violation.get("step")
        if steps is not None and not (type(step) is int and steps[0] <= step <= steps[1]):
            continue
        process = process or firsts.get(id(run))
        if process is None:
            continue
        t0, offset = origin[id(run)]
        t = violation.get("time")
        text = str(violation.get("invariant"))
        short = text if len(text) <= VIOLATION_NAME_CHARS else text[: VIOLATION_NAME_CHARS - 3] + "..."
        pid, thread_tids = tracks[id(process)]
        tid = thread_tids[thread] if type(thread) is int and 0 <= thread < len(thread_tids) else pid
        yield {"ph": "i", "s": "t", "cat": "violation", "name": f"violation: {short}", "pid": pid,
               "tid": tid, "ts": (t - t0) / 1000 + offset if type(t) is int else offset,
               "args": {"step": step, "stage": violation.get("stage"), "rank": violation.get("rank"),
                        "relation": violation.get("relation"), "invariant": text,
                        "found_after_s": _found_after(violation),
                        "calls": [_call_text(c) for c in violation.get("calls") or [] if isinstance(c, dict)]}}


def _found_after(violation: dict) -> float | None:
    """Seconds from the record that showed the violation to tc-rewrite reading the checker's report of it."""
    t, found = violation.get("time"), violation.get("found")
    return round((found - t) / 1e9, 3) if type(t) is int and type(found) is int else None


def _call_text(call: dict) -> str:
    """`train.py:72: model(x) (torch.nn...Sequential.forward)`, or the function or variable alone."""
    if "variable" in call:
        return f"variable {call['variable']}"
    if call.get("line") is not None:
        return f"{call.get('file')}:{call['line']}: {call.get('source')} ({call.get('function')})"
    return str(call.get("function"))


def export_chrome(job: Job, to: str | Path, *, ranks: list[int] | None = None,
                  steps: tuple[int, int] | None = None, force: bool = False) -> ChromeStats:
    """Write `job` (or its `ranks`, its calls and states of `steps` A..B inclusive) to `to`; gzip when it ends in
    .gz. The file appears complete or not at all; an existing one is replaced only with `force`, and never one of a
    run folder's records."""
    try:
        target = check_file_target(to, force=force)
    except OutputPathError as exc:
        raise ChromeExportError(str(exc)) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    processes = job.select(ranks)
    stats = ChromeStats()
    tmp = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        with open(tmp, "wb") as raw:
            out = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=3) if target.name.endswith(".gz") else raw
            writer = _Writer(out)
            export = _Export(job, writer, steps, stats)
            pids, tids = _track_ids(processes)
            for order, (p, pid) in enumerate(zip(processes, pids)):
                export.process(p, pid, order, tids)
            for event in _violation_events(job, processes, export.tracks, export.origin, steps):
                writer.event(event)
                stats.violations += 1
            writer.close({"source": [str(r.root.resolve()) for r in job.runs], "clock": "time.monotonic_ns per machine",
                          "alignment": "per run folder: its earliest record at 0, folders offset by run.json started",
                          "steps": list(steps) if steps else None, "ranks": ranks})
            if out is not raw:
                out.close()
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return stats
