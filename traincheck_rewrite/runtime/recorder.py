"""The recorder's life in a process: its state, each thread's records and writers, when they are written (steps,
age, size, every way out of the process), forks, and the `_tc_` entry points besides the call hook.

The call hook and the logged call are in logged_importlib_bootstrap.py (the hot path; see there why it has that name),
the hook's decision in lookup.py, the JSON of the records in encode.py, the files in writer.py.
"""

from __future__ import annotations

import functools
import itertools
import os
import sys
import threading
import time

from . import logged_importlib_bootstrap as calls
from . import lookup, meta
from .encode import DICT
from .logged_importlib_bootstrap import hook, recorder_error
from .steps import Steps
from .tracking import Tracker, _unwrap
from .writer import FLUSH_AGE_NS, TraceWriter

FLUSHER_PERIOD_S = 0.1
COMPILED_STEP = "compiled optimizer step"  # dump_loc of the state an optimizer step made by compiled code changed


class _Local(threading.local):
    quiet = False  # the recorder's own work is running on this thread: library calls it makes are not logged
    thread = None  # this thread's _Thread, made by its first record


class _Thread:
    """One thread's writers, open calls and records waiting to be written (plain attributes: cheaper than
    thread-local ones)."""

    __slots__ = ("writer", "var_writer", "stack", "tid", "records", "unrecorded", "checking", "repeats")

    def __init__(self, writer: TraceWriter, tid: int) -> None:
        self.writer, self.var_writer, self.stack, self.tid, self.records = writer, None, [], tid, writer.records
        self.unrecorded = 0  # logged calls open without records (skipped by sampling or not selected)
        self.checking = 0  # logged calls open that check tracked state after they run
        self.repeats: dict = {}  # open call's number -> names of the calls it made that are logged once (hook)


class _State:
    """Process-wide recorder state; replaced in a forked child."""

    def __init__(self, trace_dir: str, modules: tuple[str, ...], settings: dict) -> None:
        self.trace_dir = trace_dir
        self.modules = modules
        self.settings = settings
        sampling = settings.get("sampling")
        self.sampling = (sampling["warm_up"], sampling["interval"]) if sampling else None
        select = settings.get("select")
        self.select: dict | None = select["functions"] if select else None  # API name -> record its arguments
        self.track_state = not select or select["variables"]
        self.track_inner_updates = bool(settings.get("track_inner_updates"))  # else see tracking.contains_for_engine
        self.checked_in_step: set = set()  # tracked names written after a call since this optimizer step began
        self.tracker: Tracker | None = None  # made by the first track() call
        self.steps = Steps()
        self.steps.on_step = _flush_this_thread
        self.steps.on_hold = _hold_this_thread
        self.steps.on_release = _release_thread
        self.steps.on_compiled_step = _compiled_step_changes
        self.worker_check = 0  # in a child process: tries left to learn its DataLoader worker id
        self.plain = self.sampling is None  # calls may take the plain path (no sampling, no worker id to learn)
        self.pid = os.getpid()
        self.ids = itertools.count(1)
        self.local = _Local()
        self.writers: list[TraceWriter] = []
        self.threads: list[_Thread] = []
        self.lock = threading.Lock()
        self.flusher: threading.Thread | None = None
        self.closing = False
        self.pending_signal = 0  # a SIGTERM that came while this thread was writing: acted on when it is done

    def expect_worker(self) -> None:
        self.worker_check = _WORKER_TRIES
        self.plain = False

    def new_thread(self) -> _Thread:
        tid = threading.get_ident()
        thread = self.local.thread = _Thread(self.new_writer("API", tid), tid)
        with self.lock:
            self.threads.append(thread)
            if self.flusher is None:
                self.flusher = threading.Thread(target=_flush_old_records, args=(self,), name="traincheck_rewrite-flusher", daemon=True)
                self.flusher.start()
        return thread

    def new_writer(self, kind: str, tid: int) -> TraceWriter:
        writer = TraceWriter(self.trace_dir, kind, self.pid, tid)
        with self.lock:
            self.writers.append(writer)
        if self.steps.holder == tid:
            writer.hold()
        return writer

    def emit_state(self, record: dict) -> None:
        """Keep a state record (time, process, thread and meta are added when it is written) for this thread's VAR file."""
        thread = self.local.thread or self.new_thread()
        if thread.var_writer is None:
            thread.var_writer = self.new_writer("VAR", thread.tid)
        thread.var_writer.records.append((DICT, None, time.monotonic_ns(), meta.current, record))
        if not record["dump_loc"].startswith("before "):
            self.checked_in_step.add(record["var_name"])

    def flush_thread(self, thread: _Thread) -> None:
        _flush(self, thread.writer)
        if thread.var_writer is not None:
            _flush(self, thread.var_writer)


_state: _State | None = None
_WORKER_TRIES = 1000


def enabled() -> bool:
    return _state is not None


def _set_state(state: _State | None) -> None:
    global _state
    _state = calls.state = state


def start(trace_dir: str, modules: tuple[str, ...], settings: dict | None = None) -> None:
    os.makedirs(trace_dir, exist_ok=True)
    settings = settings or {}
    state = _State(trace_dir, modules, settings)
    lookup.configure(modules, state.select)
    if "multiprocessing.spawn" in sys.modules:  # started by spawn_main before the script: a spawned child
        state.expect_worker()
    meta.reset({**settings.get("meta_vars", {}), "step": 0, "stage": "init", **_launcher_ranks()})
    if state.sampling is not None:
        state.steps.before_next_step = _closing_skipped_steps
    _set_state(state)
    if os._exit is not _exit_after_flush:
        os._exit = _exit_after_flush


def _launcher_ranks() -> dict:
    """torchrun and other launchers say the process's place in the job before torch.distributed starts."""
    env = os.environ
    try:
        if "RANK" in env and "WORLD_SIZE" in env:
            return {"rank": int(env["RANK"]), "local_rank": int(env.get("LOCAL_RANK", env["RANK"])), "world_size": int(env["WORLD_SIZE"])}
    except ValueError:
        pass
    return {}


# --- when records are written ---------------------------------------------------------------------------------


def _flush(state: _State, writer: TraceWriter) -> None:
    writer.flush()
    _after_writing(state)


def _after_writing(state: _State) -> None:
    if state.pending_signal and not any(w.flushing == threading.get_ident() for w in state.writers):
        signum, state.pending_signal = state.pending_signal, 0
        _terminate_now(signum)


def _flush_this_thread() -> None:
    """A training step begins: what the thread recorded before it is written."""
    state = _state
    thread = state.local.thread if state is not None else None
    if thread is not None:
        state.flush_thread(thread)


def _hold_this_thread() -> None:
    state = _state
    thread = state.local.thread or state.new_thread()
    thread.writer.hold()
    if thread.var_writer is not None:
        thread.var_writer.hold()
    _after_writing(state)


def _release_thread(tid: int, since: int | None) -> None:
    state = _state
    if state is None:
        return
    for thread in list(state.threads):
        if thread.tid == tid:
            for writer in (thread.writer, thread.var_writer):
                if writer is not None:
                    writer.release(since)
    _after_writing(state)


def _flush_old_records(state: _State) -> None:
    """The flusher thread: every record is written at most about FLUSH_AGE_NS after it was made, whatever the
    program does meanwhile (sleeps, waits, computes without torch calls)."""
    while not state.closing and _state is state:
        time.sleep(FLUSHER_PERIOD_S)
        try:
            now = time.monotonic_ns()
            steps = state.steps
            if steps.holder is not None and steps.hold_expired(now, _held(state, steps.holder)):
                steps.release(None)
            for writer in list(state.writers):
                oldest = writer.oldest()
                if oldest is not None and now - oldest >= FLUSH_AGE_NS - FLUSHER_PERIOD_S * 1e9 and not writer.closed:
                    writer.flush()
        except Exception as exc:
            recorder_error(exc)


def _held(state: _State, tid: int) -> int:
    for thread in list(state.threads):
        if thread.tid == tid and thread.writer.held is not None:
            return len(thread.writer.held) + len(thread.records)
    return 0


def flush_all(close: bool = False) -> None:
    state = _state
    if state is None:
        return
    if state.steps.holder is not None:
        state.steps.release(None)
    if close:
        state.closing = True
    writers = list(state.writers)  # no lock: a signal handler may run this while its thread holds state.lock
    for w in writers:
        if close:
            w.close()
        else:
            w.flush()


def terminate(signum: int) -> bool:
    """For a SIGTERM handler: write everything, unless the signal came while this thread was writing (then that is
    finished first and the process ends after it, `_flush`). True: the caller ends the process now."""
    state = _state
    if state is not None and any(w.flushing == threading.get_ident() for w in state.writers):
        state.pending_signal = signum
        return False
    flush_all(close=True)
    return True


def _terminate_now(signum: int) -> None:
    import signal

    flush_all(close=True)
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


_os_exit = os._exit


@functools.wraps(_os_exit)
def _exit_after_flush(status):
    """os._exit skips atexit: the recorder writes what waits first (the program's own calls and multiprocessing's
    forked workers alike)."""
    try:
        flush_all(close=True)
    except BaseException:
        pass
    _os_exit(status)


def after_fork_in_child() -> None:
    """A forked child (DataLoader worker) starts its own files and flusher; the parent writes what it had waiting."""
    parent = _state
    if parent is None:
        return
    for writer in parent.writers:
        writer.abandon()
    state = _State(parent.trace_dir, parent.modules, parent.settings)
    state.expect_worker()
    if state.sampling is not None:
        state.steps.before_next_step = _closing_skipped_steps
    _set_state(state)


# --- the `_tc_` entry points besides the call hook --------------------------------------------------------------


def track(name: str, obj) -> None:
    """What `_tc_.track("model", model)` runs after each binding of a tracked name."""
    state = _state
    if state is None or calls.compiling():
        return
    outer_quiet, state.local.quiet = state.local.quiet, True
    try:
        if state.track_state:  # off when no selected invariant is about model state
            if state.tracker is None:
                state.tracker = Tracker(state.settings.get("tensor_dump_format", "hash"), state.settings.get("model_tracker_style", "proxy"))
            state.tracker.track(name, obj, state.emit_state)
        root = _unwrap(obj)
        if hasattr(root, "training"):
            state.steps.roots[id(root)] = root
    except Exception as exc:
        recorder_error(exc)
    finally:
        state.local.quiet = outer_quiet


def set_meta(key: str, value) -> None:
    """What `_tc_.meta("epoch", epoch)` runs after each binding of a variable named in `meta_from` (and what the
    program's own annotations run): a `step` or `stage` the program sets replaces the automatic one from then on."""
    state = _state
    if state is None or calls.compiling():
        return
    if not (value is None or type(value) in (int, float, str, bool)):
        value = repr(value)[:200]
    if key == "step":
        if value != meta.current.get("step"):
            _flush_this_thread()  # the program's own step counter: a new step begins
        state.steps.set_user_step(value)
    elif key == "stage":
        state.steps.set_user_stage()
    meta.update(**{key: value})


def loop(site: int, iterable):
    """What `for x in _tc_.loop(site, it)` iterates: `it`, telling the step counter where each iteration starts."""
    if _state is None or calls.compiling():
        return iterable
    return _iterations(site, iterable)


def _iterations(site: int, iterable):
    steps = _state.steps
    try:
        for item in iterable:
            if not calls.compiling():
                steps.iteration(site, time.monotonic_ns())
            yield item
    finally:
        if _state is not None and not calls.compiling():
            _state.steps.loop_end(site)


def cond(site: int, value):
    """What `while _tc_.cond(site, c)` tests: `c`, telling the step counter where each iteration starts."""
    state = _state
    if state is not None and not calls.compiling():
        try:
            if value:
                state.steps.iteration(site, time.monotonic_ns())
            else:
                state.steps.loop_end(site)
        except Exception as exc:
            recorder_error(exc)
    return value


def each(method: str, label: str, iterable):
    """What `for epoch in _tc_.each("meta", "epoch", it)` iterates: `it`, registering each item as it is bound."""
    if _state is None:
        return iterable
    register = track if method == "track" else set_meta
    return _registered(register, label, iterable)


def _registered(register, label: str, iterable):
    for item in iterable:
        register(label, item)
        yield item


importing = 0  # rewritten library modules (or their parents) executing, in any thread: import time


def library_hook(site: str, fn):
    """What `_tc_(site, fn)` evaluates to in a rewritten library module: `hook`, except at import time and while the
    recorder's own work on this thread (model tracking walks `named_parameters()`) runs library code."""
    if importing or calls.compiling() or (_state is not None and _state.local.quiet):
        return fn
    return hook(site, fn)


def _library_loop(site: str, iterable):
    """`_tc_.loop` in a framework's loop module (its training loop): not at import time."""
    if importing:
        return iterable
    return loop(site, iterable)


def _library_cond(site: str, value):
    if importing:
        return value
    return cond(site, value)


def after_optimizer_step(name: str, optimizer) -> None:
    """Run by torch's step post-hook, inside the step's call window whoever called it: the tracked state the step
    changed (or, with the sampler style, a snapshot), unless the sampling skips this step (its changes are recorded
    at the end of the skipped steps)."""
    state = _state
    if state is None or calls.compiling():
        return
    local = state.local
    outer_quiet, local.quiet = local.quiet, True
    try:
        tracker = state.tracker
        if tracker is not None and (state.sampling is None or calls.sampled(state)):
            if tracker.sampler:
                tracker.snapshot(name, state.emit_state)
            else:  # a parameter written by a check inside the step (`adam.adam`'s) has its hash of now: not hashed again
                written, names = state.checked_in_step, tracker.names_by_id
                params = (p for group in optimizer.param_groups for p in group["params"]
                          if names.get(id(p), ("",))[0] not in written)  # fmt: skip
                tracker.check_stepped(name, state.emit_state, params)
        state.steps.optimizer_step_done()
    except Exception as exc:
        recorder_error(exc)
    finally:
        local.quiet = outer_quiet


def _compiled_step_changes() -> None:
    """An optimizer step made by compiled code ran no post-hook: the tracked state it changed, recorded in its step
    as the post-hook would (by version counters: the compiled update copies into the parameters)."""
    state = _state
    if state is None or state.tracker is None:
        return
    local = state.local
    outer_quiet, local.quiet = local.quiet, True
    try:
        if state.sampling is None or calls.sampled(state):
            if state.tracker.sampler:
                state.tracker.snapshot(COMPILED_STEP, state.emit_state)
            else:
                state.tracker.check(COMPILED_STEP, state.emit_state)
    except Exception as exc:
        recorder_error(exc)
    finally:
        local.quiet = outer_quiet


hook.track = track
hook.each = each
hook.meta = set_meta
hook.loop = loop
hook.cond = cond
library_hook.loop = _library_loop
library_hook.cond = _library_cond


def _closing_skipped_steps(next_step: int) -> None:
    """Before the first recorded step after skipped ones: record what the skipped steps changed, with the last
    skipped step's meta variables, so that the recorded step's own changes stand apart (TrainCheck compares values
    within a step across ranks). After every skipped step: the identities its checks would have given."""
    state = _state
    if state.tracker is None:
        return
    if not calls.sampled(state):
        try:
            state.tracker.identify_all()
        except Exception as exc:
            recorder_error(exc)
    warm_up, interval = state.sampling
    if state.tracker.sampler or next_step <= warm_up or (next_step - warm_up) % interval:
        return
    if meta.current.get("stage") != "training":
        return
    try:
        state.tracker.check("end of skipped steps", state.emit_state, False)
    except Exception as exc:
        recorder_error(exc)
