"""TrainCheck's online checker as `tc-rewrite --check` runs it: `traincheck-onlinecheck`'s own `main()`, in
TrainCheck's interpreter (this file imports nothing of traincheck_rewrite), with these changes around its engine
(its invariants' checks are untouched):

- it ends when it has checked the whole trace: the live export (trace/live.py) ends every plain file with a line
  `{"time": T, "end_of_trace": N}`; once N of them have been taken from its queue, the records before them have been
  checked and the queue says it is empty, which `--exit-on-idle` turns into the final report at once. Until then an
  idle queue is waited on (the program may be slow to start), never taken for the end;
- it looks at the folder every 0.2 s instead of every second (watchdog's PollingObserver default), so a violation is
  reported sooner after the record that shows it;
- a file's last line is read only once it is whole (the checker parses each line it reads as JSON and drops one cut
  in two by a read that overtook a write), and a file found with lines in it is read on from where its first read
  stopped (the checker seeks to the end after handling them, skipping what was appended meanwhile) and read again
  once its handler watches it (what was appended before then raised no event it could see);
- the checker means to check a record once every file it watches has been read up to the record's time, but it
  takes the read time of the file whose *name* sorts first (`min` over (path, time) pairs), counts a file whose
  content was there when it found the file as read to the end of time, and knows nothing of a file made since it
  last looked: a call is checked before the state records inside it are read (a false "zero_grad does not change
  grad"). Here the slowest file decides, a file counts as read up to its last record (the live export's progress
  marks keep an idle file moving), and before any file's new lines are read, every trace file that appeared in the
  folder is registered (as read up to time 0) and then read (watchdog hands out modifications before creations);
- its report (`report.html`) is rebuilt at most once every `--report-interval-seconds`, new violations or not, and
  once more at the end: it rebuilt it after every violation, and each build re-serialises every violation so far
  (1,791 violations of a 400-step run took 21 of the checker's 31 s; the checks themselves under 2 s). Violations
  still reach `failed.log` one by one as they are found;
- once its report is written it exits at once: the interpreter's teardown of torch and traincheck took about a second
  more, which `tc-rewrite` waited for after every run;
- a violation of "A always precedes B" names the call of A that B did not follow beside the call of A that showed it
  (the online check names only the latter: `--check` then showed the program's line of the call after the gap, not
  of the call where B was missing);
- "f() receives distinct arguments at each step" holds each pair of calls to the invariant's precondition, a property
  of two calls ("same step, unequal stage"), as inference does: the online check tested the new call alone and then
  compared every pair of the step, so an evaluation's forward let the other ranks' training forwards, alike on every
  rank, be compared (a false alarm on each healthy two-rank run with such an invariant).

    python onlinecheck_driver.py <traincheck-onlinecheck arguments>
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import time
from itertools import combinations

from traincheck import checker_online
from traincheck.invariant import DistinctArgumentRelation as distinct_argument
from traincheck.invariant import lead_relation
from traincheck.invariant.base_cls import OnlineCheckerResult
from traincheck.onlinechecker import streamhandler_filesystem
from traincheck.onlinechecker.utils import Checker_data, set_meta_vars_online
from traincheck.reporting.checker_report import ReportEmitter

END_OF_TRACE = "end_of_trace"
POLL_S = 0.2
DONE = "[tc-rewrite] checked"  # its last line: how many records, in how long from the first


class _UntilEndOfTrace(queue.Queue):
    """The checker's queue of records: empty only once every file's end-of-trace line has been taken."""

    def __init__(self) -> None:
        super().__init__()
        self.ends = 0
        self.files: int | None = None
        self.taken = 0
        self.first_taken: float | None = None

    def get(self, block: bool = True, timeout: float | None = None):
        while True:
            if self.files is not None and self.ends >= self.files and self.empty():
                busy = time.monotonic() - (self.first_taken or time.monotonic())
                print(f"{DONE} {self.taken} records in {busy:.3f} s", flush=True)
                raise queue.Empty
            try:
                record = super().get(True, POLL_S)
            except queue.Empty:
                continue
            self.taken += 1
            if self.first_taken is None:
                self.first_taken = time.monotonic()
            if isinstance(record, dict) and END_OF_TRACE in record:
                self.ends += 1
                self.files = int(record[END_OF_TRACE])
            return record


class _CheckerData(Checker_data):
    def __init__(self, needed_data) -> None:
        super().__init__(needed_data)
        self.check_queue = _UntilEndOfTrace()


def _whole_lines(self, event) -> None:
    """StreamLogHandler.on_modified, after attaching the folder's new trace files; a last line with no newline yet is
    kept for the next read."""
    if os.path.abspath(event.src_path) != os.path.abspath(self.file_path):
        return
    for folder in _folders:
        folder.attach_new()
    _read_lines(self)


def _initial_content(self) -> None:
    """StreamLogHandler._save_initial_content, leaving the file read up to its last record, not to the end of time."""
    self.fp.seek(0)
    _read_lines(self)
    self._read_to = self.fp.tell()  # handling the lines moved nothing: where readlines() stopped


_handler_init = streamhandler_filesystem.StreamLogHandler.__init__


def _init_reading_on(self, *args, **kwargs) -> None:
    """StreamLogHandler.__init__, then on from where its first read stopped: it seeks to the end of the file after
    handling the lines there, and what was appended meanwhile was never read (handling a long file takes seconds; a
    short run's end marks written then left the check waiting for them for good)."""
    _handler_init(self, *args, **kwargs)
    self.fp.seek(self._read_to)


def _set_read_time(self, trace_record) -> None:
    """StreamLogHandler._set_read_time, with the least read time of all files (not that of the first file name)."""
    data = self.checker_data
    with data.cond:
        data.read_time_map[self.file_path] = trace_record["time"]
        before = data.min_read_time
        data.min_read_path, data.min_read_time = min(data.read_time_map.items(), key=lambda item: item[1])
        if data.min_read_time != before:
            data.cond.notify_all()


def _read_lines(self) -> None:
    lines = self.fp.readlines()
    if not lines:
        return
    lines[0] = self.__dict__.pop("_partial_line", "") + lines[0]
    if not lines[-1].endswith("\n"):
        self._partial_line = lines.pop()
    if lines:
        self._handle_line(lines)


_folders: list = []  # the FolderCreationHandler of each folder watched
_FolderCreationHandler = streamhandler_filesystem.FolderCreationHandler


class _KnownFolder(_FolderCreationHandler):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        _folders.append(self)

    def attach(self, file_path: str) -> None:
        self.attach_new()

    def attach_new(self) -> None:
        """Every trace file of the folder not attached yet: first registered as read up to time 0, so that no record
        of another file is checked before their records are read; then read, and read again once its handler is
        watching: what was appended between its first read and then raised no event the handler could see (a state
        file made near the end of a short run then never gave the check its end mark)."""
        new = [os.path.join(self.trace_folder, name) for name in sorted(os.listdir(self.trace_folder))
               if self._is_trace_file(name) and os.path.join(self.trace_folder, name) not in self.seen_files]  # fmt: skip
        if not new:
            return
        data = self.checker_data
        with data.cond:
            for path in new:
                data.read_time_map.setdefault(path, 0)
            data.min_read_path, data.min_read_time = min(data.read_time_map.items(), key=lambda item: item[1])
        for path in new:
            self.seen_files.add(path)
            self.logger.info(f"New trace file detected, watching: {path}")
            handler = streamhandler_filesystem.StreamLogHandler(path, data)
            self.observer.schedule(handler, path=os.path.dirname(path), recursive=False)
            _read_lines(handler)


def _distinct_among_admitted(check_relation_first, inv, trace_record, checker_data):
    """DistinctArgumentRelation.online_check, with each pair of calls held to the precondition, which is a property
    of two calls (examples are pairs: "same step, unequal stage"), as inference and the offline check read it."""
    if trace_record["type"] != distinct_argument.TraceLineType.FUNC_CALL_PRE:
        return OnlineCheckerResult(trace=None, invariant=inv, check_passed=True)
    with checker_data.lock:
        [trace_record] = set_meta_vars_online([trace_record], checker_data)
        calls = checker_data.args_map.get(inv.params[0].api_full_name, {}).get(trace_record.get("meta_vars.step", -1), {})
        for pt1, pt2 in combinations(list(calls), 2):
            for one in calls[pt1]:
                for other in calls[pt2]:
                    if _alike_and_admitted(inv, one, other):
                        return OnlineCheckerResult(trace=[one, other], invariant=inv, check_passed=False)
        for pt in calls:
            for one, other in combinations(calls[pt], 2):
                if _alike_and_admitted(inv, one, other):
                    return OnlineCheckerResult(trace=[one, other], invariant=inv, check_passed=False)
    return OnlineCheckerResult(trace=None, invariant=inv, check_passed=True)


def _alike_and_admitted(inv, one: dict, other: dict) -> bool:
    return distinct_argument.is_arguments_list_same(one["args"], other["args"]) and inv.precondition.verify(
        [one, other], distinct_argument.EXP_GROUP_NAME, None
    )


def _report_due(self, report_state, force: bool) -> bool:
    """ReportEmitter._should_emit, with the interval between two reports kept when violations were found since."""
    if force:
        return True
    if self._last_report_state == report_state and self.report_interval_seconds <= 0:
        return False
    return time.monotonic() - self._last_report_ts >= self.report_interval_seconds


_lead_check = lead_relation.FunctionLeadRelation.online_check


def _lead_with_the_call_b_did_not_follow(check_relation_first, inv, trace_record, checker_data):
    """FunctionLeadRelation.online_check, with the earlier call of A (the one it looked back to) first in the trace
    of a violation."""
    result = _lead_check(check_relation_first, inv, trace_record, checker_data)
    if result.check_passed or not result.trace:
        return result
    shown = result.trace[-1]
    earlier = None
    with checker_data.lock:
        events = checker_data.pt_map.get((shown["process_id"], shown["thread_id"], shown["function"]), {})
        for event in events.values():
            post = event.post_record
            if post is None or post["time"] >= shown["time"] or (earlier is not None and post["time"] <= earlier[0]):
                continue
            if inv.precondition.verify(set_meta_vars_online([event.pre_record], checker_data), lead_relation.EXP_GROUP_NAME, None):
                earlier = (post["time"], event.pre_record)
    if earlier is not None:
        result.trace = [earlier[1], *result.trace]
    return result


def _polling_observer():
    return _PollingObserver(timeout=POLL_S)


_PollingObserver = streamhandler_filesystem.PollingObserver

if __name__ == "__main__":
    checker_online.Checker_data = _CheckerData
    streamhandler_filesystem.PollingObserver = _polling_observer
    streamhandler_filesystem.StreamLogHandler.on_modified = _whole_lines
    streamhandler_filesystem.StreamLogHandler._save_initial_content = _initial_content
    streamhandler_filesystem.StreamLogHandler.__init__ = _init_reading_on
    streamhandler_filesystem.StreamLogHandler._set_read_time = _set_read_time
    streamhandler_filesystem.FolderCreationHandler = _KnownFolder
    distinct_argument.DistinctArgumentRelation.online_check = staticmethod(_distinct_among_admitted)
    ReportEmitter._should_emit = _report_due
    lead_relation.FunctionLeadRelation.online_check = staticmethod(_lead_with_the_call_b_did_not_follow)
    sys.argv = ["traincheck-onlinecheck", *sys.argv[1:]]
    try:
        checker_online.main()
        code = 0
    except SystemExit as exc:  # its SIGINT and SIGTERM handlers: the report written, exit 130 or 143
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
