"""What an instrumented file imports first: find the run folder, start the recorder once, hand out the hook.

`attach(__file__)` looks for the run folder in `TC_REWRITE_RUN_DIR`, else walks up from the instrumented file to the
nearest folder holding `run.json`. Traces go to `<run folder>/traces` unless `TC_REWRITE_TRACE_DIR` says otherwise.
Without a run folder the program runs untraced, after one warning.
"""

from __future__ import annotations

import atexit
import json
import linecache
import os
import signal
import sys
import threading
import tokenize

from . import dynamo, loader_meta, optimizer_hooks, recorder, user_files
from .warn import warn_once

_attached = False
_run_dir: str | None = None
_user_files: user_files.UserFiles | None = None
ORIGINALS = user_files.ORIGINALS  # run.py writes the rewritten files' originals there


def _find_run_dir(file: str | None) -> str | None:
    env = os.environ.get("TC_REWRITE_RUN_DIR")
    if env:
        return env
    if not file:
        return None
    folder = os.path.dirname(os.path.abspath(file))
    while True:
        if os.path.isfile(os.path.join(folder, "run.json")):
            return folder
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder = parent


def _runtime_settings(run_dir: str) -> dict:
    try:
        with open(os.path.join(run_dir, "run.json"), encoding="utf-8") as f:
            return json.load(f).get("runtime", {})
    except (OSError, ValueError) as exc:
        warn_once(f"cannot read {os.path.join(run_dir, 'run.json')} ({exc}); using default settings")
        return {}


def attach(file: str | None):
    """Start tracing for this process (once) and return the call hook."""
    global _attached
    if not _attached:
        _attached = True
        try:
            _start(file)
        except Exception as exc:  # the program must run even when tracing cannot
            warn_once(f"tracing is off: {type(exc).__name__}: {exc}")
    if _run_dir is not None and file:
        _show_original_source(file)
        if _user_files is not None:  # the main script: runs under the user's file name from here, then exits
            user_files.run_main(_user_files, file, sys._getframe(1))
    return recorder.hook


def _show_original_source(file: str) -> None:
    """Make `linecache` (so `inspect.getsource`, `traceback.format_exc()`, TorchScript) see the file as the user
    wrote it, kept in the run folder: the rewrite keeps every line in place, so line numbers agree. TorchScript then
    compiles the user's own code (`torch.jit.script(model)`), not the logging calls."""
    try:
        rel = os.path.relpath(os.path.abspath(file), _run_dir)
        if rel.startswith(os.pardir):
            return
        with tokenize.open(os.path.join(_run_dir, ORIGINALS, rel)) as f:  # honours a coding cookie, as linecache does
            lines = f.readlines()
        with tokenize.open(file) as f:
            same_length = sum(1 for _ in f) == len(lines)
        if same_length:
            linecache.cache[file] = (sum(map(len, lines)), None, lines, file)  # no mtime: checkcache keeps it
    except (OSError, SyntaxError, ValueError):  # SyntaxError: a bad coding cookie
        pass  # no original beside it (a copied run folder without it): tracebacks show the instrumented lines


def _start(file: str | None) -> None:
    global _run_dir, _user_files
    run_dir = _find_run_dir(file)
    if run_dir is None:
        warn_once(f"no run folder (run.json) found above {file}; the program runs untraced")
        return
    _run_dir = run_dir
    settings = _runtime_settings(run_dir)
    _user_files = user_files.UserFiles(run_dir)
    sys.meta_path.insert(0, user_files.UserFileFinder(_user_files))  # before the library finder: first in line
    trace_dir = os.environ.get("TC_REWRITE_TRACE_DIR") or os.path.join(run_dir, "traces")
    modules = tuple(settings.get("modules", ("torch",)))
    recorder.start(trace_dir, modules, settings)
    frameworks = settings.get("rewrite_frameworks", True)
    if settings.get("rewrite_libraries") or frameworks:
        from . import libraries

        libraries.install(
            tuple(settings.get("rewrite_libraries", ())), modules, bool(settings.get("log_import_time_calls")), frameworks,
            bool(settings.get("track_inner_updates")),
        )  # fmt: skip
    optimizer_hooks.install()  # after the library finder: its after-import watch must come first on sys.meta_path
    loader_meta.install()
    dynamo.install()
    atexit.register(recorder.flush_all, True)
    os.register_at_fork(after_in_child=recorder.after_fork_in_child)
    _install_sigterm_flush()
    _hide_runtime_frames()


def _install_sigterm_flush() -> None:
    """Flush on SIGTERM when the program keeps the default action; the process still dies by SIGTERM."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return

    def on_sigterm(signum, frame):
        if recorder.terminate(signum):  # else the records being written when it came are finished first
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)


_RUNTIME_DIR = os.path.dirname(os.path.abspath(__file__))


def _strip(exc: BaseException | None, seen: set) -> None:
    """Unlink the recorder's own frames from `exc`'s traceback (and its chained exceptions)."""
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None and (tb.tb_frame.f_code.co_filename.startswith(_RUNTIME_DIR) or user_files.is_launcher(tb.tb_frame.f_code)):
            tb = tb.tb_next
        exc.__traceback__ = tb
        while tb is not None:
            nxt = tb.tb_next
            while nxt is not None and nxt.tb_frame.f_code.co_filename.startswith(_RUNTIME_DIR):
                nxt = nxt.tb_next
            tb.tb_next = nxt
            tb = nxt
        _strip(exc.__cause__, seen)
        exc = exc.__context__


def _hide_runtime_frames() -> None:
    """Uncaught tracebacks print exactly as without the tool (the logging wrapper adds one frame per API call)."""
    if sys.excepthook is sys.__excepthook__:

        def excepthook(exc_type, exc, tb):
            try:
                _strip(exc, set())
                tb = exc.__traceback__
            except Exception:
                pass
            sys.__excepthook__(exc_type, exc, tb)

        sys.excepthook = excepthook
    if threading.excepthook is threading.__excepthook__:

        def thread_excepthook(args):
            try:
                _strip(args.exc_value, set())
                args = type(args)((args.exc_type, args.exc_value, args.exc_value.__traceback__, args.thread))
            except Exception:
                pass
            threading.__excepthook__(args)

        threading.excepthook = thread_excepthook


def lazy(site: int, fn):
    """The hook for files with no line to hold the import: attaches from the caller's `__file__` on first use."""
    if not _attached:
        attach(sys._getframe(1).f_globals.get("__file__"))
    return recorder.hook(site, fn)


def _lazy_track(name: str, obj) -> None:
    if not _attached:
        attach(sys._getframe(1).f_globals.get("__file__"))
    recorder.track(name, obj)


lazy.track = _lazy_track
for _name in ("meta", "loop", "cond", "each"):  # used after the first hook call has attached
    setattr(lazy, _name, getattr(recorder.hook, _name))
