"""Argument and return-value envelopes: `{"<type name>": payload}`, cheap and never consuming anything.

A tensor is summarised by a fixed set of attributes (no contents, no walk over `dir()`) and a data id beside the type
key: its storage's order of appearance in the process, the same for every tensor on that storage (`p`, `p.data`, a
view) while it lives. Addresses would be reused and differ from run to run; this order is what a rerun gives again.
It tells two calls on one tensor from calls on two tensors alike. An attribute torch refuses to read (a no_grad
view's `is_leaf` after its base changed in place, a nested tensor's shape) is null, and a dimension torch gives as a
symbol (a jagged tensor's) is null in the shape: the call is recorded all the same. Other objects are summarised by at most 16 public
primitive attributes of their `__dict__`. torch is looked up lazily: the runtime must not import it before the
program does (scripts set environment variables before `import torch`).
"""

from __future__ import annotations

import itertools
import sys
import weakref

import orjson

MAX_ITEMS = 16
MAX_STR = 200

_PRIMITIVES = (bool, int, float, str, type(None))
_tensor_type = None
_tensor_statics: dict = {}
_tensor_envelopes: dict = {}  # (dtype, layout, is_cpu, device index, shape, requires_grad, is_leaf) -> envelope
_tensor_json: dict = {}  # (dtype, layout, device, shape, is_leaf if requires_grad) -> the envelope as JSON text
MAX_SHARED_ENVELOPES = 4096
_type_names: dict = {}
_data_ids: dict = {}  # id(storage object) -> (weak reference to it, its data id)
_next_data_id = itertools.count()


def _float(v: float):
    if v - v == 0.0:
        return v
    return "nan" if v != v else ("inf" if v > 0 else "-inf")


def type_name(t: type) -> str:
    name = _type_names.get(t)
    if name is None:
        module = t.__module__
        name = t.__qualname__ if module == "builtins" else f"{module}.{t.__qualname__}"
        _type_names[t] = name
    return name


def _tensor(v) -> dict:
    """The envelope: the payload is shared by all tensors alike in everything it holds (records are encoded, never
    changed), the data id is this tensor's."""
    data_id = _data_id(v)
    try:
        shared = _shared_tensor_envelope(v)
    except Exception:  # an attribute torch refuses to read
        shared = _readable_envelope(v)
    return shared if data_id is None else {**shared, "data_id": data_id}


def _shared_tensor_envelope(v) -> dict:
    """Raises what torch raises for an attribute it refuses to read (the callers then use `_readable_envelope`)."""
    key = (v.dtype, v.layout, v.is_cpu, v.get_device(), type(v), v.shape, v.requires_grad, v.is_leaf)
    env = _tensor_envelopes.get(key)
    if env is None:
        if len(_tensor_envelopes) >= MAX_SHARED_ENVELOPES:
            _tensor_envelopes.clear()
        env = _tensor_envelopes[key] = _new_tensor_envelope(v, key)
    return env


def _data_id_in_python(v) -> int | None:
    """The order of appearance of the tensor's storage; None for a tensor without one (sparse). `_data_id` is this,
    or the same in C."""
    try:
        storage = v.untyped_storage()  # one Python object per storage, as long as the storage lives
    except (RuntimeError, NotImplementedError):
        return None
    key = id(storage)
    known = _data_ids.get(key)
    if known is None or known[0]() is not storage:
        known = _data_ids[key] = (weakref.ref(storage, lambda ref, key=key: _forget(key, ref)), next(_next_data_id))
    return known[1]


def _forget(key: int, ref) -> None:
    """A storage died: its entry goes (unless a new storage at the same address has already taken the key)."""
    known = _data_ids.get(key)
    if known is not None and known[0] is ref:
        del _data_ids[key]


def _new_tensor_envelope(v, key: tuple) -> dict:
    static_key = key[:5]
    static = _tensor_statics.get(static_key)
    if static is None:
        static = _tensor_statics[static_key] = _tensor_static(v)
    tname, dtype, device, itemsize, is_cpu = static
    shape = [d if type(d) is int else None for d in key[5]]  # a jagged tensor's symbolic dimension: null
    numel = v.numel()
    return {
        tname: {
            "dtype": dtype,
            "shape": shape,
            "device": device,
            "requires_grad": key[6],
            "is_leaf": key[7],
            "ndim": len(shape),
            "numel": numel,
            "itemsize": itemsize,
            "nbytes": numel * itemsize,
            "is_cpu": is_cpu,
        }
    }


def _tensor_static(v) -> tuple:
    """What a (dtype, layout, device, class) fixes: type name, dtype and device strings, item size. A parameter is
    named `torch.nn.Parameter`, as TrainCheck's collector names it."""
    torch = sys.modules["torch"]
    if isinstance(v, torch.nn.Parameter):
        tname = "torch.nn.Parameter"
    else:
        tname = v.type() if v.layout is torch.strided else f"torch.{v.layout}"
    return (tname, str(v.dtype), str(v.device), v.element_size(), v.is_cpu)


def readable(v, name: str):
    """An attribute (a method's result for numel, element_size, type), or None where torch refuses it."""
    try:
        value = getattr(v, name)
        return value() if name in ("numel", "element_size", "type") else value
    except Exception:
        return None


def _readable_envelope(v) -> dict:
    """The envelope of a tensor torch refuses some attributes of, read one by one: each refused one is null."""
    torch = sys.modules["torch"]
    layout, shape = readable(v, "layout"), readable(v, "shape")
    numel, itemsize = readable(v, "numel"), readable(v, "element_size")
    if isinstance(v, torch.nn.Parameter):
        tname = "torch.nn.Parameter"
    elif layout is torch.strided:
        tname = readable(v, "type") or type_name(type(v))
    else:
        tname = f"torch.{layout}"
    return {
        tname: {
            "dtype": str(readable(v, "dtype")),
            "shape": None if shape is None else [d if type(d) is int else None for d in shape],
            "device": str(readable(v, "device")),
            "requires_grad": readable(v, "requires_grad"),
            "is_leaf": readable(v, "is_leaf"),
            "ndim": readable(v, "ndim"),
            "numel": numel,
            "itemsize": itemsize,
            "nbytes": None if numel is None or itemsize is None else numel * itemsize,
            "is_cpu": readable(v, "is_cpu"),
        }
    }


def _sequence(v) -> list:
    out = [envelope(x) for x in v[:MAX_ITEMS]] if isinstance(v, (list, tuple)) else []
    if len(v) > MAX_ITEMS:
        out.append({"...": len(v) - MAX_ITEMS})
    return out


def _mapping(v: dict) -> dict:
    out = {}
    for i, (k, x) in enumerate(v.items()):
        if i == MAX_ITEMS:
            out["..."] = {"int": len(v) - MAX_ITEMS}
            break
        out[k if type(k) is str else repr(k)] = envelope(x)
    return out


def _object(v) -> dict:
    attrs = {}
    d = getattr(v, "__dict__", None)
    if type(d) is dict:
        for k, x in d.items():
            if k[:1] != "_" and type(x) in _PRIMITIVES:
                attrs[k] = _float(x) if type(x) is float else (x[:MAX_STR] if type(x) is str else x)
                if len(attrs) == MAX_ITEMS:
                    break
    return {type_name(type(v)): attrs}


_ENCODERS = {
    type(None): lambda v: {"NoneType": None},
    bool: lambda v: {"bool": v},
    int: lambda v: {"int": v},
    float: lambda v: {"float": _float(v)},
    str: lambda v: {"str": v[:MAX_STR]},
    bytes: lambda v: {"bytes": len(v)},
    list: lambda v: {"list": _sequence(v)},
    tuple: lambda v: {"tuple": _sequence(v)},
    dict: lambda v: {"dict": _mapping(v)},
}


def _torch_encoders() -> None:
    """Register torch's own types once torch is imported."""
    global _tensor_type
    torch = sys.modules["torch"]
    _tensor_type = torch.Tensor
    _ENCODERS[torch.dtype] = lambda v: {"torch.dtype": str(v)}
    _ENCODERS[torch.device] = lambda v: {"torch.device": str(v)}
    _ENCODERS[torch.Size] = lambda v: {"torch.Size": list(v)}


def envelope(v) -> dict:
    encode = _ENCODERS.get(type(v))
    if encode is not None:
        return encode(v)
    if _tensor_type is None and "torch" in sys.modules:
        _torch_encoders()
        encode = _ENCODERS.get(type(v))
        if encode is not None:
            return encode(v)
    if _tensor_type is not None and isinstance(v, _tensor_type):
        return _tensor(v)
    return _object(v)


def return_envelope(v):
    if type(v) is tuple:
        return [envelope(x) for x in v[:MAX_ITEMS]]
    return envelope(v)


# --- envelopes as JSON text: what the logged call keeps in its records ---------------------------------------------


def _json(v) -> str:
    return orjson.dumps(v).decode()


def _tensor_encoded(v) -> str:
    # what the shared envelope depends on; a tensor without grad is always a leaf (one attribute read less)
    try:
        key = (type(v), v.dtype, v.layout, v.device, v.shape, v.is_leaf if v.requires_grad else None)
        data = _tensor_json.get(key)
        if data is None:
            data = _json(_shared_tensor_envelope(v))
            if len(_tensor_json) >= MAX_SHARED_ENVELOPES:
                _tensor_json.clear()
            _tensor_json[key] = data
    except Exception:  # an attribute torch refuses to read: not shared
        data = _json(_readable_envelope(v))
    return _with_data_id(data, v)


def _with_data_id(shared: str, v) -> str:
    data_id = _data_id(v)
    return shared if data_id is None else f'{shared[:-1]},"data_id":{data_id}}}'


def _tensor_text_in_python(v) -> str:
    """A tensor of a kind met before: its shared envelope with its data id. `_tensor_text` is this, or the same in
    C."""
    try:
        key = (type(v), v.dtype, v.layout, v.device, v.shape, v.is_leaf if v.requires_grad else None)  # as in _tensor_encoded
        data = _tensor_json.get(key)
    except Exception:  # an attribute torch refuses to read
        return _tensor_encoded(v)
    return _with_data_id(data, v) if data is not None else _tensor_encoded(v)


_data_id, _tensor_text = _data_id_in_python, _tensor_text_in_python
_NONE_JSON, _TRUE_JSON, _FALSE_JSON = '{"NoneType":null}', '{"bool":true}', '{"bool":false}'
_TEXT_ENCODERS = {
    type(None): lambda v: _NONE_JSON,
    bool: lambda v: _TRUE_JSON if v else _FALSE_JSON,
    int: lambda v: f'{{"int":{v}}}',
}
_tensor_types: set = set()  # torch.Tensor, nn.Parameter and the subclasses met


def encoded(v) -> str:
    """`envelope(v)` as JSON text (what orjson makes of it). A tensor's is computed once per kind of tensor (six
    attribute reads and one look-up per call), and shared."""
    t = type(v)
    if t in _tensor_types:
        return _tensor_text(v)
    encode = _TEXT_ENCODERS.get(type(v))
    if encode is not None:
        return encode(v)
    if _tensor_type is None and "torch" in sys.modules:
        _torch_encoders()
    if _tensor_type is not None and isinstance(v, _tensor_type):
        _tensor_types.add(type(v))
        return _tensor_encoded(v)
    if t is list or t is tuple:
        return _sequence_encoded(v, t)
    return _json(envelope(v))


def _sequence_encoded(v, t: type) -> str:
    """`{"list": _sequence(v)}` as JSON text, from its items' text: an optimizer's inner calls take lists of every
    parameter, grad and state, whose tensors' shared text is then looked up instead of built as dicts."""
    items = [encoded(x) for x in v[:MAX_ITEMS]]
    if len(v) > MAX_ITEMS:
        items.append(f'{{"...":{len(v) - MAX_ITEMS}}}')
    return f'{{"{t.__name__}":[{",".join(items)}]}}'


def number(v) -> None:
    """Give the tensors in `v` their data ids in the order `encoded(v)` would, encoding nothing. A logged call that
    keeps no record (in a step the sampling skips, or kept only for its role) numbers its tensors too, so that a
    sampled run's ids are those of a run that records everything, whose trace the invariants were learnt from
    (functions no invariant names go through `numbered`, which does only this)."""
    t = type(v)
    if t in _tensor_types:
        _data_id(v)
    elif t is list or t is tuple:
        for x in v[:MAX_ITEMS]:
            number(x)
    elif t is dict:
        for i, x in enumerate(v.values()):
            if i == MAX_ITEMS:
                break
            number(x)
    elif t not in _ENCODERS:
        if _tensor_type is None and "torch" in sys.modules:
            _torch_encoders()
        if _tensor_type is not None and isinstance(v, _tensor_type):
            _tensor_types.add(t)
            _data_id(v)


def encoded_return(v) -> str:
    """`return_envelope(v)` as JSON text."""
    if type(v) is tuple:
        return "[" + ",".join([encoded(x) for x in v[:MAX_ITEMS]]) + "]"
    return encoded(v)


try:
    from . import _speedups
except ImportError:  # not built: the Python code above runs
    pass
else:  # the same results from the same caches (tests/test_speedups.py)
    _speedups.configure_values(_tensor_json, _tensor_encoded, _data_ids)
    _data_id = _speedups.data_id
    _tensor_text = _speedups.tensor_text
