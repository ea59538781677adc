"""The logged call: what `_tc_(site, fn)(...)` runs when `fn` is an instrumented API, and the records it keeps.

Where `_speedups` is built (setup.py), the wrapper `hook` returns is a C callable (`_speedups.LoggedCall`): it does
the plain path itself and calls `general_begin`/`general_end` around the call on the general path, and it is no
Python frame, so while the callee runs the innermost Python frame is the program's. A warning raised by torch's C++
code (stacklevel 1 names the innermost Python frame), `inspect`, `sys._getframe` and tracebacks then see the
program's line, as in the plain run.

`logged` and `numbered` below are the same wrappers in Python: the reference (tests/test_speedups.py compares the
records of both) and what runs where nothing compiled the C part. They are Python frames, so there a warning raised
with stacklevel 1 by C code inside a logged call names this file (and the default filter shows it once, not once per
program line), and a traceback the program formats itself shows a frame of it. Why this file's name holds
"importlib" and "_bootstrap": CPython's `warnings` (C `is_internal_frame`) and, from 3.11, `logging`
(`_is_internal_frame`) skip the frames of such files when they count `stacklevel`, as they skip the import
machinery's. So even there `warnings.warn(..., stacklevel=2)` or `logger.info(..., stacklevel=2)` inside a logged
callee names the user's line (tests/test_transparency.py).

A call on the plain path (most calls: no step/stage role, no tracked state to check, no sampling) appends two tuples
to its thread's records (encode.py) and computes argument envelopes once per kind of tensor (values.encoded).
"""

from __future__ import annotations

import os
import sys
import time
from types import MethodType

from . import meta
from .encode import EXC, POST, PRE
from .lookup import BOUND, CONTAINED_ONLY, FORWARD, INNER, LOGGED, MUTATES, NAME, PLAIN, ROLE, ROLE_BACKWARD, ROLE_CHECKPOINT, ROLE_DIST_INIT, ROLE_NEW_OPTIMIZER, lookup
from .values import MAX_ITEMS, _tensor_types, encoded, encoded_return, number, type_name
from .warn import warn_once
from .writer import BATCH

state = None  # the recorder's process state (recorder.py sets it; None: not recording)
_now = time.monotonic_ns
_NO_PROXIES = ()  # a tuple, not a list: records holding only atoms are untracked by the garbage collector


def _compiling_before_torch() -> bool:
    """Stands in for torch.compiler.is_compiling until torch is imported."""
    global compiling
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "compiler"):
        return False
    compiling = torch.compiler.is_compiling
    return compiling()


compiling = _compiling_before_torch  # the recorder's entry points return at once while dynamo compiles


def hook(site, fn):
    """What `_tc_(site, fn)` evaluates to: `fn`, or `fn` wrapped so that the call is logged.

    Under torch.compile, dynamo traces this function and folds `compiling()` to True: the compiled graph sees the
    plain call and nothing of the recorder.
    """
    if state is None or compiling():
        return fn
    try:
        found = lookup(fn)
    except Exception as exc:
        recorder_error(exc)
        return fn
    if found is None:
        return fn
    info = found[0]
    if info[CONTAINED_ONLY] and type(site) is str and not state.track_inner_updates:
        thread = state.local.thread
        if thread is not None and (thread.checking or not info[MUTATES]):
            if _repeated(thread, info[NAME]):
                info = _NUMBERED
            elif info[INNER] is not None:  # inside a call that checks: its check records this call's changes
                info = info[INNER]
    if info is _NUMBERED or not (info[LOGGED] or info[ROLE] or _changes_tracked_tensor(info, found[1])):
        if _c_call is not None:
            return _c_call(site, fn, None, found[1])
        return MethodType(numbered, (fn, found[1]))
    if _c_call is not None:
        return _c_call(site, fn, info, found[1])
    return MethodType(logged, (site, fn, info, found[1]))


_NUMBERED = ()  # hook's choice for a repeated call: numbered, not logged


def _changes_tracked_tensor(info: tuple, owner) -> bool:
    """Whether a call that is not logged (no invariant names it) is an in-place method of a tracked tensor: it takes
    the general path all the same, which records no call but checks the state around it, so the change is recorded
    where a run that logs everything records it (`buffer.copy_(mean)` at its step, not at the next logged call that
    checks: on two ranks that moment differs more between them, and the engine's consistency check compares the
    ranks' values by how long they overlap)."""
    if owner is None or not info[MUTATES] or info[NAME][-1] != "_":
        return False
    tracker = state.tracker
    return tracker is not None and checks_state(tracker, info, owner)


def _repeated(thread, name: str) -> bool:
    """Whether the open call (inside a library) already made a logged call of `name`, which TrainCheck's engine takes
    only as a contained call ("Adam.step always calls Tensor.mul_"): for that the first call in each containing call
    is all it reads, so a repeat (the per-parameter calls of a single-tensor optimizer) is numbered, not logged."""
    stack = thread.stack
    if not stack:
        return False
    seen = thread.repeats
    parent = stack[-1][1]
    names = seen.get(parent)
    if names is None:
        if len(seen) > 64:  # open calls are few; the closed ones' sets go
            seen.clear()
        names = seen[parent] = set()
    elif name in names:
        return True
    names.add(name)
    return False


def numbered(ctx, *args, **kwargs):
    """A call no invariant names (`--invariants`): no records, no state checks, but its tensors get the data ids a
    run that records everything gives them (arguments before the call, results after it, as `encoded` numbers
    them): the engine keeps data ids as argument values, so every later id must be the full run's."""
    fn, owner = ctx
    if state is None or compiling():
        return fn(*args, **kwargs)
    _number(owner, *args, *kwargs.values())
    result = fn(*args, **kwargs)
    _number(result)
    return result


def logged(ctx, *args, **kwargs):
    """The plain path: a pre record, the call, a post (or exception) record; anything else goes the general way."""
    site, fn, info, owner = ctx
    s = state
    if s is None or not (info[PLAIN] and s.plain) or compiling():
        return _logged_general(s, site, fn, info, owner, args, kwargs)
    pre = ()  # the pre record; None: this call is the open call itself, reached again through a wrapper
    try:
        thread = s.local.thread or s.new_thread()
        stack = thread.stack
        if type(site) is int or not (stack or thread.unrecorded):  # the program's call, or a framework's outermost
            s.steps.refresh()  # one: a call inside a library (a string site) has the stage of the logged call it runs in
        elif stack and wraps_open_call(stack[-1], info, owner, args):
            pre = None
        if pre is not None:
            envs = tuple(map(encoded, args)) if owner is None else (encoded(owner), *map(encoded, args))
            tracker = s.tracker
            n = next(s.ids)
            records = thread.records
            pre = (
                PRE, n, _now(), meta.current, info, site,
                id(owner) if owner is not None else id(args[0]) if info[1] and args else None,
                stack[-1][1] if stack else None, envs,
                {k: encoded(v) for k, v in kwargs.items()} if kwargs else None,
                (tracker.proxy_names(owner, args) or _NO_PROXIES) if tracker is not None and tracker.names_by_id else _NO_PROXIES,
            )  # fmt: skip
            records.append(pre)
    except Exception as exc:
        recorder_error(exc)
        return fn(*args, **kwargs)
    if pre is None:
        return fn(*args, **kwargs)
    parent = pre[7]
    stack.append(pre)
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        closed_by_exception(thread, n, info, parent, exc)
        raise
    if stack and stack[-1] is pre:
        stack.pop()
    try:
        records.append((POST, n, _now(), meta.current, info, parent, encoded_return(result)))
        if len(records) >= BATCH:
            s.flush_thread(thread)
    except Exception as exc:
        recorder_error(exc)
    return result


def _logged_general(s, site, fn, info, owner, args, kwargs):
    """Calls with a role for steps or stage, state to check, sampling or selection, or made while compiling."""
    token = general_begin(s, site, fn, info, owner, args, kwargs)
    if token is None:
        return fn(*args, **kwargs)
    try:
        result = fn(*args, **kwargs)
    except BaseException as exc:
        general_end(token, None, exc)
        raise
    general_end(token, result, None)
    return result


def general_begin(s, site, fn, info, owner, args, kwargs):
    """The general path up to the call: None when the call is to run plainly (not recording, compiling, the open
    call reached again, a recorder error), else what `general_end` needs after it. Shared by `_logged_general` and
    the C wrapper."""
    if s is None or compiling():
        return None
    tracker = s.tracker
    check = skip = False
    local = s.local
    outer_quiet = local.quiet  # True when the recorder's own work led to this call
    local.quiet = True  # the recorder's own work calls no logged library code
    again = False
    try:
        thread = local.thread or s.new_thread()
        stack = thread.stack
        again = type(site) is not int and bool(stack) and wraps_open_call(stack[-1], info, owner, args)
    except Exception as exc:
        recorder_error(exc)
    if again:
        local.quiet = outer_quiet
        return None
    try:
        name, bound, _, role, restage, logged_, dump_args = info[:7]
        if role:
            role_before(s, role)
        if s.worker_check:
            worker_meta(s)
        if type(site) is int or not (thread.stack or thread.unrecorded):  # the program's call, or a framework's outermost one
            s.steps.refresh()
        else:  # a call inside a library (a string site) has the stage of the logged call it runs in
            restage = False
        skip = s.sampling is not None and not sampled(s)
        if not skip and not logged_:  # not selected: no API records, but what it changes is recorded inside it
            check = tracker is not None and checks_state(tracker, info, owner)
            if check:
                tracker.check(f"before {name}", s.emit_state, info[FORWARD])
            skip = True
    except Exception as exc:
        local.quiet = outer_quiet
        recorder_error(exc)
        return None
    local.quiet = outer_quiet
    if skip:
        _number(owner, *args, *kwargs.values())
        thread.unrecorded += 1
        thread.checking += check
        return (None, s, thread, role, check and info)
    local.quiet = True
    try:
        proxies = _NO_PROXIES
        if tracker is not None:
            proxies = tracker.proxy_names(owner, args) or _NO_PROXIES
            check = checks_state(tracker, info, owner)
            if check:  # changes made since the last record by code that is not logged: before this call's window
                tracker.check(f"before {name}", s.emit_state, info[FORWARD])
        envs, kw = (), None
        if dump_args:
            envs = tuple(map(encoded, args)) if owner is None else (encoded(owner), *map(encoded, args))
            kw = {k: encoded(v) for k, v in kwargs.items()} if kwargs else None
        else:
            _number(owner, *args, *kwargs.values())
        parent = stack[-1][1] if stack else None
        n = next(s.ids)
        obj_id = id(owner) if owner is not None else id(args[0]) if bound and args else None
        pre = (PRE, n, _now(), meta.current, info, site, obj_id, parent, envs, kw, proxies)
        thread.records.append(pre)
    except Exception as exc:
        local.quiet = outer_quiet
        recorder_error(exc)
        return None
    stack.append(pre)
    thread.checking += check
    local.quiet = outer_quiet
    return (s, thread, n, info, parent, restage, check)


def general_end(token: tuple, result, exc: BaseException | None) -> None:
    """The general path after the call (`exc` None: it returned `result`)."""
    if token[0] is None:  # no API records: skipped by sampling, or not selected
        _, s, thread, role, checked_info = token
        thread.unrecorded -= 1
        thread.checking -= bool(checked_info)
        unrecorded_after(s, role, checked_info)
        if exc is None:
            _number(result)
    else:
        after_call(*token, exc, result)


def wraps_open_call(open_pre: tuple, info: tuple, owner, args: tuple) -> bool:
    """Whether a call made inside a library is the open logged call itself, reached through a wrapper: the same
    function on the same object (`Optimizer.step`'s profiling and grad-mode wrappers calling `Adam.step`,
    `Module._call_impl` calling `forward`). Logged once, as the program made it; a nested module of the same class
    is another object and is logged."""
    if open_pre[4][NAME] != info[NAME]:
        return False
    this = owner if owner is not None else args[0] if info[BOUND] and args else None
    return this is not None and open_pre[6] == id(this)


# --- what the general path does around the call -----------------------------------------------------------------


def _number(*values) -> None:
    """The data ids a recorded call's values would get (values.number), for a call whose values are not kept."""
    try:
        for value in values:
            _number_value(value)
    except Exception as exc:
        recorder_error(exc)


def closed_by_exception(thread, n: int, info: tuple, parent, exc: BaseException) -> None:
    """The exception record of a call on the plain path."""
    stack = thread.stack
    if stack and stack[-1][1] == n:
        stack.pop()
    try:
        msg = _message(exc)
        thread.records.append((EXC, n, _now(), meta.current, info, parent, type_name(type(exc)), msg))
    except Exception as error:
        recorder_error(error)


def _message(exc: BaseException) -> str:
    try:
        return str(exc)[:1000]
    except Exception:
        return "<str() failed>"


def after_call(s, thread, n: int, info: tuple, parent, restage: bool, check: bool, exc, result=None) -> None:
    """State records of what the call changed (inside its window), the post or exception record, the role's end."""
    local = s.local
    outer_quiet, local.quiet = local.quiet, True
    thread.checking -= check
    try:
        name, role = info[NAME], info[ROLE]
        state_inside(s, check, info)
        stack = thread.stack
        if stack and stack[-1][1] == n:
            stack.pop()
        if restage:
            s.steps.refresh()
        if exc is None:
            thread.records.append((POST, n, _now(), meta.current, info, parent, encoded_return(result)))
        else:
            thread.records.append((EXC, n, _now(), meta.current, info, parent, type_name(type(exc)), _message(exc)))
        if role:
            role_after(s, role)
        if len(thread.records) >= BATCH:
            s.flush_thread(thread)
    except Exception as error:
        recorder_error(error)
    finally:
        local.quiet = outer_quiet


def unrecorded_after(s, role: int, checked_info) -> None:
    """After a call without API records (not selected, or in a step the sampling skips): it still counts for steps,
    and when `checked_info` is given the tracked state it changed is recorded as it returns."""
    local = s.local
    outer_quiet, local.quiet = local.quiet, True
    try:
        if checked_info:
            state_inside(s, True, checked_info)
        if role:
            role_after(s, role)
    finally:
        local.quiet = outer_quiet


def checks_state(tracker, info: tuple, owner) -> bool:
    """Whether this logged call is one that can change tracked state (see tracking.mutates)."""
    if not info[MUTATES] or tracker.sampler:
        return False
    if info[FORWARD]:
        return id(owner) in tracker.roots  # the tracked model's forward updates buffers; submodules' calls are inside it
    name = info[NAME]
    if name[-1] == "_" and owner is not None and not name.startswith("torch.optim."):
        return id(owner) in tracker.names_by_id or tracker.dirty_by_storage(owner)
    return True


def state_inside(s, check: bool, info: tuple) -> None:
    """State records of what the call changed, timed inside its window (before its post record)."""
    tracker = s.tracker
    if tracker is None or not check:
        return
    try:
        tracker.check(info[NAME], s.emit_state, info[FORWARD])
    except Exception as exc:
        recorder_error(exc)


def sampled(s) -> bool:
    """Whether this moment's records are kept: training steps 1..warm_up, then every interval-th, and an evaluation
    inside a training iteration with its step (kept alone, its calls would stand next to other steps' training
    calls); everything else (set-up, evaluation outside the training loop, checkpointing)."""
    current = meta.current
    step = current.get("step")
    stage = current.get("stage")
    if type(step) is not int or (stage != "training" and not (stage == "evaluation" and s.steps.in_training_iteration())):
        return True
    warm_up, interval = s.sampling
    return step <= warm_up or (step - warm_up) % interval == 0


def role_before(s, role: int) -> None:
    steps = s.steps
    if role == ROLE_BACKWARD:
        steps.backward()
    elif role == ROLE_CHECKPOINT:
        steps.checkpointing += 1
    elif role == ROLE_NEW_OPTIMIZER:
        steps.optimizer_made = True


def role_after(s, role: int) -> None:
    """After the post record: a checkpoint call's pre and post records both say `checkpointing`."""
    try:
        if role == ROLE_CHECKPOINT:
            s.steps.checkpointing -= 1
        elif role == ROLE_DIST_INIT:
            dist = sys.modules["torch.distributed"]
            if dist.is_initialized():
                rank = dist.get_rank()
                meta.update(rank=rank, world_size=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", rank)))
    except Exception as exc:
        recorder_error(exc)


def worker_meta(s) -> None:
    """In a child process, the DataLoader worker's id, once torch says which worker this is (a child that is no
    DataLoader worker stops asking after a while)."""
    data = sys.modules.get("torch.utils.data")
    info = data.get_worker_info() if data is not None else None
    if info is not None:
        meta.update(worker_id=info.id)
        s.worker_check = 0
    else:
        s.worker_check -= 1
    if not s.worker_check:
        s.plain = s.sampling is None


def recorder_error(exc: Exception) -> None:
    warn_once(f"recorder error ({type(exc).__name__}: {exc}); the program runs on, this call is not logged")


try:
    from ._speedups import configure_calls, logged_call
    from ._speedups import number as _number_value
except ImportError:  # not built, or built from an older _speedups.c: `logged` and `numbered` above are the wrappers
    _c_call, _number_value = None, number
else:  # the same wrappers as a C callable (_speedups.c): no Python frame between the program's call and the callee
    configure_calls(
        globals(), meta.__dict__, general_begin, general_end, closed_by_exception, recorder_error, encoded,
        encoded_return, number, _tensor_types, BATCH, MAX_ITEMS,
    )  # fmt: skip
    _c_call = logged_call
