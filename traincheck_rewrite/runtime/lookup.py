"""The hook's decision: is a callee an instrumented API, and what is it (name, role for steps and stage, what its
records hold)?

The decision depends only on the callee and is cached per function, type or (type, method name) (bounded), so a call
that is not an instrumented API costs one function call and one or two dict look-ups and then runs in the user's own
frame.
"""

from __future__ import annotations

import sys
from types import BuiltinFunctionType, FunctionType, MethodType, ModuleType

import orjson

from .tracking import contains_for_engine, mutates
from .values import type_name

# Definitions reached through a C base class are named after the class users know.
_CLASS_ALIASES = {"torch._C.TensorBase": "torch.Tensor"}

# What an info tuple holds, by index.
NAME, BOUND, MUTATES, ROLE, RESTAGE, LOGGED, DUMP_ARGS, NAME_JSON, BOUND_JSON, PLAIN, FORWARD, INNER, CONTAINED_ONLY = range(13)

# Optimizer steps are not told by name: torch's step hooks report every one (optimizer_hooks.py).
ROLE_BACKWARD, ROLE_CHECKPOINT, ROLE_DIST_INIT, ROLE_NEW_OPTIMIZER = 2, 3, 4, 5
_ROLES = {
    "torch._tensor.Tensor.backward": ROLE_BACKWARD,
    "torch.autograd.backward": ROLE_BACKWARD,
    "torch.serialization.save": ROLE_CHECKPOINT,
    "torch.serialization.load": ROLE_CHECKPOINT,
    "torch.distributed.distributed_c10d.init_process_group": ROLE_DIST_INIT,
}

# The steps from a module's call to its `forward` (with library depth into torch.nn.modules): the module's call is
# logged once, named after its forward (see _is_torch_module), so these are not logged between the two.
_MODULE_CALL_STEPS = frozenset(
    {"torch.nn.modules.module.Module._wrapped_call_impl", "torch.nn.modules.module.Module._call_impl"}
)

_STAGE_CHANGERS = (".train", ".eval", "set_grad_enabled", "inference_mode", "_set_grad_enabled")

_modules: tuple[str, ...] = ()
_select: dict | None = None  # API name -> record its arguments (`--invariants`); None: every API
_module_ok: dict[str, bool] = {}
_method_info: dict = {}  # (type, name) -> info | None
_class_info: dict = {}  # class (called to construct) -> info | None
_call_info: dict = {}  # type of a callable instance -> info | None
_local_paths: dict = {}
_function_info: dict = {}  # instrumented function object -> info


def configure(modules: tuple[str, ...], select: dict | None) -> None:
    """Start over with these instrumented modules and this selection."""
    global _modules, _select
    _modules, _select = modules, select
    for cache in (_module_ok, _method_info, _class_info, _call_info, _function_info):
        cache.clear()


def _instrumented(module) -> bool:
    ok = _module_ok.get(module)
    if ok is None:
        ok = bool(module) and isinstance(module, str) and any(module == m or module.startswith(m + ".") for m in _modules)
        _module_ok[module] = ok
    return ok


def _info(name: str, bound: bool, forward: bool = False) -> tuple | None:
    """The info tuple (see the indexes above): function name, is_bound_method, can change model state, role for
    steps/stage, can change the stage by itself (the post record then looks again), gets records, records its
    arguments, the name and is_bound_method as JSON, whether the call takes the plain path (no role, no state check,
    no stage change, records with arguments), whether it is a module's call (`model(x)`), and for a call that
    changes state but that TrainCheck's engine never takes as a containing call (an in-place tensor method, a private
    function) the same info without the state check, which it has inside a call that checks (`hook`), and whether
    the engine takes it only as a contained call (its name is in the engine's skip list). None for what is no API. Under `--invariants` an API no invariant names has `logged` False: with no role either, the hook only
    numbers its tensors (`numbered`)."""
    if name in _MODULE_CALL_STEPS or "<locals>" in name:
        return None  # a closure made inside a library function is no API (nothing TrainCheck's collector can patch)
    role = _ROLES.get(name, 0)
    if not bound and name.startswith("torch.optim.") and "lr_scheduler" not in name and name.rsplit(".", 1)[1][:1].isupper():
        role = ROLE_NEW_OPTIMIZER
    logged = dump_args = True
    if _select is not None:
        selected = _select.get(name)
        # backward stays logged (without arguments): its records part one optimizer step from the next in the
        # engine's event table, which drops a function called more than twice in a row from lead/cover checking
        logged, dump_args = selected is not None or role == ROLE_BACKWARD, bool(selected)
    changes_state = forward or mutates(name)
    restage = bool(role) or name.endswith(_STAGE_CHANGERS)
    plain = not (role or changes_state or restage) and logged and dump_args
    common = (name, bound, changes_state, role, restage, logged, dump_args, orjson.dumps(name).decode(),
              "true" if bound else "false", plain, forward)  # fmt: skip
    inner = None
    if changes_state and not forward and not contains_for_engine(name):
        # inside a logged call a stage change is not looked for either (it has the stage of the call it runs in)
        inner = (*common[:MUTATES], False, *common[MUTATES + 1 : PLAIN], not role and logged and dump_args, forward, None, True)
    return (*common, inner, not forward and not contains_for_engine(name))


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
        if _is_torch_module(definer):
            info = _info(f"{_class_path(_definer(t, 'forward') or definer)}.forward", True, forward=True)
        else:
            info = _info(f"{_class_path(definer)}.__call__", True)
    _call_info[t] = info
    return info


def _is_torch_module(cls: type) -> bool:
    """`torch.nn.Module` itself. A module's call is named after the `forward` it runs (`torch.nn.modules.linear.
    Linear.forward`), as TrainCheck's collector names it; TrainCheck's engine leaves every `Module.*` name out of
    its relations, so `Module.__call__` would teach it nothing."""
    return cls.__name__ == "Module" and cls.__module__ == "torch.nn.modules.module"
