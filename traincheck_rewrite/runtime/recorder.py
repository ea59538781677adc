"""The call hook of instrumented programs: `_tc_(site, fn)` returns `fn`, or a wrapper that logs the call.

The decision depends only on the callee and is cached per type (bounded), so a call that is not an instrumented API
costs one function call and one or two dict look-ups and then runs in the user's own frame.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from types import BuiltinFunctionType, FunctionType, MethodType, ModuleType

from . import meta
from .steps import Steps
from .tracking import Tracker, _unwrap, mutates
from .values import envelope, return_envelope, type_name
from .writer import TraceWriter, warn_once

PRE = "function_call (pre)"
POST = "function_call (post)"
EXC = "function_call (post) (exception)"
_NO_PROXIES: list = []
_MODULE_CALL = "torch.nn.modules.module.Module.__call__"

# Definitions reached through a C base class are named after the class users know.
_CLASS_ALIASES = {"torch._C.TensorBase": "torch.Tensor"}


class _Local(threading.local):
    quiet = False  # the recorder's own work is running on this thread: library calls it makes are not logged
    thread = None  # this thread's _Thread, made by its first record


class _Thread:
    """One thread's writers, open calls and last record time (plain attributes: cheaper than thread-local ones)."""

    __slots__ = ("writer", "var_writer", "stack", "tid", "last_time")

    def __init__(self, writer: TraceWriter, tid: int) -> None:
        self.writer, self.var_writer, self.stack, self.tid, self.last_time = writer, None, [], tid, 0

    def now(self) -> int:
        """monotonic_ns, strictly increasing within the thread (records are ordered by time)."""
        t = time.monotonic_ns()
        if t <= self.last_time:
            t = self.last_time + 1
        self.last_time = t
        return t


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
        self.tracker: Tracker | None = None  # made by the first track() call
        self.steps = Steps()
        self.worker_check = 0  # in a child process: tries left to learn its DataLoader worker id
        self.pid = os.getpid()
        self.id_base = self.pid * 1_000_000_000
        self.ids = itertools.count(1)
        self.local = _Local()
        self.writers: list[TraceWriter] = []
        self.lock = threading.Lock()


_state: _State | None = None
_module_ok: dict[str, bool] = {}
_method_info: dict = {}  # (type, name) -> info | None
_class_info: dict = {}  # class (called to construct) -> info | None
_call_info: dict = {}  # type of a callable instance -> info | None


def enabled() -> bool:
    return _state is not None


def start(trace_dir: str, modules: tuple[str, ...], settings: dict | None = None) -> None:
    global _state
    os.makedirs(trace_dir, exist_ok=True)
    _module_ok.clear()
    _method_info.clear()
    _class_info.clear()
    _call_info.clear()
    _function_info.clear()
    _state = _State(trace_dir, modules, settings or {})
    if "multiprocessing.spawn" in sys.modules:  # started by spawn_main before the script: a spawned child
        _state.worker_check = _WORKER_TRIES
    meta.reset({**(settings or {}).get("meta_vars", {}), "step": 0, "stage": "init", **_launcher_ranks()})
    if _state.sampling is not None:
        _state.steps.before_next_step = _closing_skipped_steps


def _launcher_ranks() -> dict:
    """torchrun and other launchers say the process's place in the job before torch.distributed starts."""
    env = os.environ
    try:
        if "RANK" in env and "WORLD_SIZE" in env:
            return {"rank": int(env["RANK"]), "local_rank": int(env.get("LOCAL_RANK", env["RANK"])), "world_size": int(env["WORLD_SIZE"])}
    except ValueError:
        pass
    return {}


def _instrumented(module) -> bool:
    ok = _module_ok.get(module)
    if ok is None:
        ok = bool(module) and isinstance(module, str) and any(
            module == m or module.startswith(m + ".") for m in _state.modules
        )
        _module_ok[module] = ok
    return ok


# Optimizer steps are not told by name: torch's step hooks report every one (optimizer_hooks.py).
_ROLE_BACKWARD, _ROLE_CHECKPOINT, _ROLE_DIST_INIT, _ROLE_NEW_OPTIMIZER = 2, 3, 4, 5
_ROLES = {
    "torch._tensor.Tensor.backward": _ROLE_BACKWARD,
    "torch.autograd.backward": _ROLE_BACKWARD,
    "torch.serialization.save": _ROLE_CHECKPOINT,
    "torch.serialization.load": _ROLE_CHECKPOINT,
    "torch.distributed.distributed_c10d.init_process_group": _ROLE_DIST_INIT,
}


_STAGE_CHANGERS = (".train", ".eval", "set_grad_enabled", "inference_mode", "_set_grad_enabled")


def _info(name: str, bound: bool) -> tuple | None:
    """(function name, is_bound_method, can change model state, role for steps/stage, can change the stage by
    itself: the post record then looks again, gets records, records its arguments); None for a call that is neither
    selected (`--invariants`) nor needed by the step counter."""
    role = _ROLES.get(name, 0)
    if not bound and name.startswith("torch.optim.") and "lr_scheduler" not in name and name.rsplit(".", 1)[1][:1].isupper():
        role = _ROLE_NEW_OPTIMIZER
    logged = dump_args = True
    if _state.select is not None:
        selected = _state.select.get(name)
        if selected is None and not role:
            return None
        logged, dump_args = selected is not None, bool(selected)
    return (name, bound, mutates(name), role, bool(role) or name.endswith(_STAGE_CHANGERS), logged, dump_args)


def _class_path(cls: type) -> str:
    path = type_name(cls)
    return _CLASS_ALIASES.get(path, path)


def _definer(cls: type, name: str) -> type | None:
    for base in cls.__mro__:
        if name in base.__dict__:
            return base
    return None


def _method(cls: type, name: str):
    key = (cls, name)
    try:
        return _method_info[key]
    except KeyError:
        pass
    definer = _definer(cls, name)
    info = None
    if definer is not None and _instrumented(definer.__module__):
        info = _info(f"{_class_path(definer)}.{name}", True)
    _method_info[key] = info
    return info


_local_paths: dict = {}
_function_info: dict = {}  # instrumented function object -> info


def _cache_function(fn, info: tuple | None):
    """Remember `fn`'s info; False stands for "not logged" (None is "not looked up yet")."""
    if len(_function_info) > 50_000:  # functions made at run time (closures) must not pile up
        _function_info.clear()
    _function_info[fn] = info or False
    return info


def _function_path(fn) -> str:
    """module.qualname, or, for a closure made by a decorator (`F.max_pool2d`), the module attribute it is."""
    qualname = fn.__qualname__
    if "<locals>" not in qualname:
        return f"{fn.__module__}.{qualname}"
    key = (fn.__module__, fn.__name__, qualname)
    path = _local_paths.get(key)
    if path is None:
        module = sys.modules.get(fn.__module__)
        exported = module is not None and getattr(module, fn.__name__, None) is fn
        path = _local_paths[key] = f"{fn.__module__}.{fn.__name__ if exported else qualname}"
    return path


def _defined_in_class(fn) -> bool:
    """A method reached as a plain function (`Optimizer.step(opt)`, a decorator's `func(self, ...)` inside a library):
    logged as bound like its other calls, since TrainCheck needs one `is_bound_method` per function."""
    parts = fn.__qualname__.rsplit(".", 2)
    return len(parts) > 1 and parts[-2] != "<locals>"


def lookup(fn):
    """(info, self) when `fn` is an instrumented API, else None."""
    t = type(fn)
    if t is FunctionType:
        info = _function_info.get(fn)
        if info is None:
            if not _instrumented(fn.__module__):
                return None  # decided by module name: user functions made in a loop are not kept alive here
            info = _cache_function(fn, _info(_function_path(fn), _defined_in_class(fn)))
        return (info, None) if info else None
    if t is MethodType:
        func = fn.__func__
        info = _function_info.get(func)
        if info is None:
            if not _instrumented(getattr(func, "__module__", None)):
                return None
            info = _cache_function(func, _info(_function_path(func), True))
        return (info, fn.__self__) if info else None
    if t is BuiltinFunctionType:  # also bound C methods
        owner = fn.__self__
        if owner is None or type(owner) is ModuleType:
            info = _function_info.get(fn)
            if info is None:
                module = fn.__module__ or getattr(owner, "__name__", None)
                if not _instrumented(module):
                    return None
                info = _cache_function(fn, _info(f"{module}.{fn.__name__}", False))
            return (info, None) if info else None
        if isinstance(owner, type):
            info = _method(owner, fn.__name__)
            return (info, None) if info is not None else None
        info = _method(type(owner), fn.__name__)
        return (info, owner) if info is not None else None
    if isinstance(fn, type):
        try:
            info = _class_info[fn]
        except KeyError:
            info = _class_info[fn] = _info(_class_path(fn), False) if _instrumented(fn.__module__) else None
        return (info, None) if info is not None else None
    try:
        info = _call_info[t]
    except KeyError:
        info = _classify(fn, t)
    return (info, fn if info[1] else None) if info is not None else None


def _classify(fn, t: type):
    """Descriptors and callable instances: cached per type."""
    objclass = getattr(fn, "__objclass__", None)  # unbound C method: torch.Tensor.add(x, y)
    if isinstance(objclass, type):
        name = getattr(fn, "__name__", "")
        # descriptors are shared objects of a few types: decided each time, not cached by type
        return _info(f"{_class_path(objclass)}.{name}", False) if _instrumented(objclass.__module__) else None
    definer = _definer(t, "__call__")
    info = None
    if definer is not None and _instrumented(definer.__module__):
        info = _info(f"{_class_path(definer)}.__call__", True)
    _call_info[t] = info
    return info


def _compiling_before_torch() -> bool:
    """Stands in for torch.compiler.is_compiling until torch is imported."""
    global _compiling
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "compiler"):
        return False
    _compiling = torch.compiler.is_compiling
    return _compiling()


_compiling = _compiling_before_torch


def hook(site: int, fn):
    """What `_tc_(site, fn)` evaluates to.

    Under torch.compile, dynamo traces this function and folds `_compiling()` to True: the compiled graph sees the
    plain call and nothing of the recorder.
    """
    if _state is None or _compiling():
        return fn
    try:
        found = lookup(fn)
    except Exception as exc:
        _recorder_error(exc)
        return fn
    if found is None:
        return fn
    return MethodType(_logged, (site, fn, found[0], found[1]))


def _thread() -> _Thread:
    local = _state.local
    thread = local.thread
    if thread is None:
        tid = threading.get_ident()
        thread = local.thread = _Thread(_new_writer("API", tid), tid)
    return thread


def _new_writer(kind: str, tid: int) -> TraceWriter:
    writer = TraceWriter(_state.trace_dir, kind, _state.pid, tid)
    with _state.lock:
        _state.writers.append(writer)
    return writer


def _emit_state(record: dict) -> None:
    """Complete a state record (time, process, thread, meta) and write it to this thread's VAR file."""
    thread = _thread()
    if thread.var_writer is None:
        thread.var_writer = _new_writer("VAR", thread.tid)
    now = thread.now()
    record.update(time=now, process_id=_state.pid, thread_id=thread.tid, meta_vars=meta.current)
    _append(thread.var_writer, record, now)


def _append(writer: TraceWriter, record: dict, now: int) -> None:
    """Write, unless the step counter holds this thread's records until the training loop is known."""
    steps = _state.steps
    if steps.held is None or not steps.hold(writer, record, now):
        writer.append(record, now)


def track(name: str, obj) -> None:
    """What `_tc_.track("model", model)` runs after each binding of a tracked name."""
    state = _state
    if state is None or _compiling():
        return
    outer_quiet, state.local.quiet = state.local.quiet, True
    try:
        if state.track_state:  # off when no selected invariant is about model state
            if state.tracker is None:
                state.tracker = Tracker(state.settings.get("tensor_dump_format", "hash"), state.settings.get("model_tracker_style", "proxy"))
            state.tracker.track(name, obj, _emit_state)
        root = _unwrap(obj)
        if hasattr(root, "training"):
            state.steps.roots[id(root)] = root
    except Exception as exc:
        _recorder_error(exc)
    finally:
        state.local.quiet = outer_quiet


def set_meta(key: str, value) -> None:
    """What `_tc_.meta("epoch", epoch)` runs after each binding of a variable named in `meta_from`."""
    state = _state
    if state is None or _compiling():
        return
    if not (value is None or type(value) in (int, float, str, bool)):
        value = repr(value)[:200]
    if key == "step":
        state.steps.set_user_step(value)
    meta.update(**{key: value})


def loop(site: int, iterable):
    """What `for x in _tc_.loop(site, it)` iterates: `it`, telling the step counter where each iteration starts."""
    if _state is None:
        return iterable
    return _iterations(site, iterable)


def _iterations(site: int, iterable):
    steps = _state.steps
    try:
        for item in iterable:
            steps.iteration(site, time.monotonic_ns())
            yield item
    finally:
        if _state is not None:
            _state.steps.loop_end(site)


def cond(site: int, value):
    """What `while _tc_.cond(site, c)` tests: `c`, telling the step counter where each iteration starts."""
    state = _state
    if state is not None:
        try:
            if value:
                state.steps.iteration(site, time.monotonic_ns())
            else:
                state.steps.loop_end(site)
        except Exception as exc:
            _recorder_error(exc)
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
    if importing or _compiling() or (_state is not None and _state.local.quiet):
        return fn
    return hook(site, fn)


def _library_loop(site: str, iterable):
    """`_tc_.loop` in a framework's loop module (its training loop): not at import time."""
    if importing or _state is None or _compiling():
        return iterable
    return _iterations(site, iterable)


def _library_cond(site: str, value):
    if importing or _compiling():
        return value
    return cond(site, value)


hook.track = track
hook.each = each
hook.meta = set_meta
hook.loop = loop
hook.cond = cond
library_hook.loop = _library_loop
library_hook.cond = _library_cond


def _checks_state(tracker: Tracker, info: tuple, owner) -> bool:
    """Whether this logged call is one that can change tracked state (see tracking.mutates)."""
    if not info[2] or tracker.sampler:
        return False
    name = info[0]
    if name == _MODULE_CALL:
        return id(owner) in tracker.roots  # the tracked model's forward updates buffers; submodules' calls are inside it
    if name[-1] == "_" and owner is not None and not name.startswith("torch.optim."):
        return id(owner) in tracker.names_by_id or tracker.dirty_by_storage(owner)
    return True


def _logged(ctx, *args, **kwargs):
    site, fn, info, owner = ctx
    state = _state
    if state is None:
        return fn(*args, **kwargs)
    tracker = state.tracker
    check = skip = False
    local = state.local
    outer_quiet = local.quiet  # True when the recorder's own work led to this call
    local.quiet = True  # the recorder's own work calls no logged library code
    try:
        thread = _thread()
        writer, stack, tid = thread.writer, thread.stack, thread.tid
        name, bound, _, role, restage, logged, dump_args = info
        steps = state.steps
        if role:
            _role_before(state, role)
        if state.worker_check:
            _worker_meta(state)
        if type(site) is int or not stack:  # the program's call, or a framework's outermost one
            steps.refresh()
        else:  # a call inside a library (a string site) has the stage of the logged call it runs in
            restage = False
        skip = state.sampling is not None and not _sampled(state.sampling)
        if not skip and not logged:  # not selected: no API records, but what it changes is recorded inside it
            check = tracker is not None and _checks_state(tracker, info, owner)
            if check:
                tracker.check(f"before {name}", _emit_state, name == _MODULE_CALL)
            skip = True
    except Exception as exc:
        local.quiet = outer_quiet
        _recorder_error(exc)
        return fn(*args, **kwargs)
    local.quiet = outer_quiet
    if skip:
        return _unrecorded(state, role, fn, args, kwargs, check and name)
    local.quiet = True
    try:
        proxies = _NO_PROXIES
        if tracker is not None:
            proxies = tracker.proxy_names(owner, args)
            check = _checks_state(tracker, info, owner)
            if check:  # changes made since the last record by code that is not logged: before this call's window
                tracker.check(f"before {name}", _emit_state, name == _MODULE_CALL)
        call_id = state.id_base + next(state.ids)
        arg_env, kwarg_env = {}, {}
        if dump_args:
            if owner is not None:
                arg_env["0"] = envelope(owner)
            start = 1 if owner is not None else 0
            for i, a in enumerate(args, start):
                arg_env[str(i)] = envelope(a)
            kwarg_env = {k: envelope(v) for k, v in kwargs.items()}
        now = thread.now()
        _append(
            writer,
            {
                "type": PRE,
                "func_call_id": call_id,
                "function": name,
                "time": now,
                "process_id": state.pid,
                "thread_id": tid,
                "meta_vars": meta.current,
                "is_bound_method": bound,
                "obj_id": id(owner) if owner is not None else id(args[0]) if bound and args else None,
                "parent_id": stack[-1] if stack else None,
                "site": site,
                "args": arg_env,
                "kwargs": kwarg_env,
                "proxy_obj_names": proxies,
            },
            now,
        )
    except Exception as exc:
        local.quiet = outer_quiet
        _recorder_error(exc)
        return fn(*args, **kwargs)
    stack.append(call_id)
    local.quiet = outer_quiet
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        local.quiet = True
        _state_inside(tracker, check, name)
        _close(thread, call_id, name, restage, _exception_record(exc))
        if role:
            _role_after(state, role)
        local.quiet = outer_quiet
        raise
    local.quiet = True
    _state_inside(tracker, check, name)
    _close(thread, call_id, name, restage, None, result)
    if role:
        _role_after(state, role)
    local.quiet = outer_quiet
    return result


def _sampled(sampling: tuple[int, int]) -> bool:
    """Whether this moment's records are kept: all outside training, steps 1..warm_up, then every interval-th."""
    current = meta.current
    step = current.get("step")
    if current.get("stage") != "training" or type(step) is not int:
        return True
    warm_up, interval = sampling
    return step <= warm_up or (step - warm_up) % interval == 0


def _closing_skipped_steps(next_step: int) -> None:
    """Before the first recorded step after skipped ones: record what the skipped steps changed, with the last
    skipped step's meta variables, so that the recorded step's own changes stand apart (TrainCheck compares values
    within a step across ranks)."""
    state = _state
    warm_up, interval = state.sampling
    if state.tracker is None or state.tracker.sampler or next_step <= warm_up or (next_step - warm_up) % interval:
        return
    if meta.current.get("stage") != "training":
        return
    try:
        state.tracker.check("end of skipped steps", _emit_state, False)
    except Exception as exc:
        _recorder_error(exc)


def _unrecorded(state: _State, role: int, fn, args, kwargs, checked_name):
    """A call without API records (not selected, or in a step the sampling skips): it still counts for steps, and
    when `checked_name` is given the tracked state it changed is recorded as it returns."""
    try:
        return fn(*args, **kwargs)
    finally:
        outer_quiet, state.local.quiet = state.local.quiet, True
        if checked_name:
            _state_inside(state.tracker, True, checked_name)
        if role:
            _role_after(state, role)
        state.local.quiet = outer_quiet


def _role_before(state: _State, role: int) -> None:
    steps = state.steps
    if role == _ROLE_BACKWARD:
        steps.backward()
    elif role == _ROLE_CHECKPOINT:
        steps.checkpointing += 1
    elif role == _ROLE_NEW_OPTIMIZER:
        steps.optimizer_made = True


def _role_after(state: _State, role: int) -> None:
    """After the post record: a checkpoint call's pre and post records both say `checkpointing`."""
    try:
        if role == _ROLE_CHECKPOINT:
            state.steps.checkpointing -= 1
        elif role == _ROLE_DIST_INIT:
            dist = sys.modules["torch.distributed"]
            if dist.is_initialized():
                rank = dist.get_rank()
                meta.update(rank=rank, world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", rank)))
    except Exception as exc:
        _recorder_error(exc)


_WORKER_TRIES = 1000


def _worker_meta(state: _State) -> None:
    """In a child process, the DataLoader worker's id, once torch says which worker this is (a child that is no
    DataLoader worker stops asking after a while)."""
    data = sys.modules.get("torch.utils.data")
    info = data.get_worker_info() if data is not None else None
    if info is not None:
        meta.update(worker_id=info.id)
        state.worker_check = 0
    else:
        state.worker_check -= 1


def _state_inside(tracker: Tracker | None, check: bool, name: str) -> None:
    """State records of what the call changed, timed inside its window (before its post record)."""
    if tracker is None or not check:
        return
    try:
        tracker.check(name, _emit_state, name == _MODULE_CALL)
    except Exception as exc:
        _recorder_error(exc)


def after_optimizer_step(state: _State, name: str, optimizer) -> None:
    """Run by torch's step post-hook, inside the step's call window whoever called it: the tracked state the step
    changed (or, with the sampler style, a snapshot), then this thread's records go to disk (a step boundary)."""
    local = state.local
    outer_quiet, local.quiet = local.quiet, True
    try:
        tracker = state.tracker
        if tracker is not None and (state.sampling is None or _sampled(state.sampling)):  # a skipped step's changes
            if tracker.sampler:  # are recorded at the end of the skipped steps
                tracker.snapshot(name, _emit_state)
            else:
                tracker.check_stepped(name, _emit_state, (p for group in optimizer.param_groups for p in group["params"]))
        thread = local.thread
        if thread is not None:
            thread.writer.flush()
            if thread.var_writer is not None:
                thread.var_writer.flush()
    except Exception as exc:
        _recorder_error(exc)
    finally:
        local.quiet = outer_quiet


def _exception_record(exc: BaseException) -> dict:
    try:
        msg = str(exc)
    except Exception:
        msg = "<str() failed>"
    return {"exception": type_name(type(exc)), "exception_msg": msg[:1000]}


def _close(thread: _Thread, call_id, name, restage, exc_fields, result=None) -> None:
    stack = thread.stack
    if stack and stack[-1] == call_id:
        stack.pop()
    state = _state
    if state is None:
        return
    try:
        if restage:
            state.steps.refresh()
        now = thread.now()
        record = {
            "type": EXC if exc_fields is not None else POST,
            "func_call_id": call_id,
            "function": name,
            "time": now,
            "process_id": state.pid,
            "thread_id": thread.tid,
            "meta_vars": meta.current,
            "parent_id": stack[-1] if stack else None,
        }
        if exc_fields is not None:
            record.update(exc_fields)
        else:
            record["return_values"] = return_envelope(result)
        _append(thread.writer, record, now)
    except Exception as exc:
        _recorder_error(exc)


def _recorder_error(exc: Exception) -> None:
    warn_once(f"recorder error ({type(exc).__name__}: {exc}); the program runs on, this call is not logged")


def flush_all(close: bool = False) -> None:
    state = _state
    if state is None:
        return
    if state.steps.held is not None:
        state.steps.release(None)
    with state.lock:
        writers = list(state.writers)
    for w in writers:
        if close:
            w.close()
        else:
            w.flush()


def after_fork_in_child() -> None:
    """A forked child (DataLoader worker) starts its own files; the parent flushes what it had buffered.

    multiprocessing ends forked workers with os._exit, which skips atexit: its own exit hook flushes them.
    """
    global _state
    parent = _state
    if parent is None:
        return
    for writer in parent.writers:
        writer.abandon()
    _state = _State(parent.trace_dir, parent.modules, parent.settings)
    _state.worker_check = _WORKER_TRIES
    mp_util = sys.modules.get("multiprocessing.util")
    if mp_util is not None:
        # A multiprocessing child clears its finalizers, then runs its after-fork callbacks: register from there.
        mp_util.register_after_fork(_state, _register_exit_flush)


def _register_exit_flush(_state_in_child) -> None:
    sys.modules["multiprocessing.util"].Finalize(None, flush_all, args=(True,), exitpriority=100)
