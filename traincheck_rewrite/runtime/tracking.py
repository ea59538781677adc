"""Model tracking without touching the program's objects: parameters and buffers are read, never wrapped.

`track(name, obj)` records every parameter and buffer once. Afterwards the recorder calls `check` around logged calls
that can change model state (an optimizer's methods, `backward`, `Module` methods that move or load weights,
`torch.nn.utils`/`torch.nn.init` functions, the tracked model's own forward for buffers, in-place methods on a
tracked tensor): the tensor's version counter, its grad's identity and version tell what changed, and only what
changed is hashed and written. A check before such a call writes changes made by unlogged code (outside the call's
window); the check after it writes the call's own changes inside its window, before its post record.

What a model holds is read again when it changed: torch's global registration hooks say when a submodule, parameter
or buffer is assigned to a module of a tracked model (`model.fc = nn.Linear(...)` after `model` was bound), and the
next check walks the model again, records the new tensors and forgets the ones it no longer holds.
"""

from __future__ import annotations

import itertools
import sys
import weakref

from . import tensors
from .warn import warn_once


class _Tensor:
    """One tracked tensor as last written: tells what changed, and gives back the contents that did not change."""

    __slots__ = (
        "var_name", "var_type", "ref", "ptr", "is_buffer", "version", "data_ptr", "data", "grad_ref", "grad_version",
        "grad_ptr", "grad", "data_hash", "requires_grad", "data_id", "data_id_ptr", "grad_id", "grad_id_ref",
    )

    def __init__(self, var_name: str, t) -> None:
        self.var_name = var_name
        self.is_buffer = not isinstance(t, sys.modules["torch"].nn.Parameter)
        self.var_type = "torch.Tensor" if self.is_buffer else "torch.nn.Parameter"
        self.ref = weakref.ref(t)
        self.ptr = _storage(t)  # the storage it was tracked with (by_ptr)
        self.version = self.data_ptr = self.grad_ref = self.grad_version = self.grad_ptr = self.data_hash = None
        self.requires_grad = self.data_id = self.data_id_ptr = self.grad_id = self.grad_id_ref = None
        self.data = self.grad = tensors.UNKNOWN

    def _same_grad(self, grad) -> bool:
        """Whether `grad` is the grad last written (by identity: a weak reference, since ids of freed grads recur)."""
        if grad is None:
            return self.grad_ref is None
        return self.grad_ref is not None and self.grad_ref() is grad

    def changed(self, t) -> bool:
        """Changed as its version counter, storage, grad or requires_grad tell (`_by_content` tells the rest). Every
        check asks this of every tracked tensor: the cheap reads come first, and nothing is called that need not be."""
        if t._version != self.version or t.requires_grad != self.requires_grad:  # requires_grad_(): a stage (un)frozen
            return True
        grad = t.grad
        if grad is None:
            if self.grad_ref is not None:
                return True
        elif self.grad_ref is None or self.grad_ref() is not grad or grad._version != self.grad_version:
            return True
        try:
            return t.data_ptr() != self.data_ptr  # `p.data = other` keeps the version counter
        except RuntimeError:  # no storage (sparse)
            return self.data_ptr is not None

    def known(self, t) -> tuple:
        """The (data, grad) contents written last time that still hold (same version and storage; for grad, the same
        tensor too), else UNKNOWN. A buffer's data is always read again."""
        data = self.data
        if self.is_buffer or t._version != self.version or _storage(t) != self.data_ptr:
            data = tensors.UNKNOWN
        grad = t.grad
        if grad is None or not self._same_grad(grad) or grad._version != self.grad_version or _storage(grad) != self.grad_ptr:
            return data, tensors.UNKNOWN
        return data, self.grad

    def seen(self, t, attrs: dict, keep: bool, data_hash: int | None) -> None:
        """Remember the tensor as written now, and its contents when `keep` (formats small enough to hold)."""
        grad = t.grad
        self.version, self.data_ptr, self.requires_grad = t._version, _storage(t), t.requires_grad
        if grad is None:
            self.grad_ref = self.grad_version = self.grad_ptr = None
        else:
            self.grad_ref, self.grad_version, self.grad_ptr = weakref.ref(grad), grad._version, _storage(grad)
        if keep:
            self.data, self.grad = attrs["data"], attrs["grad"]
        if self.is_buffer or data_hash is not None:
            self.data_hash = data_hash if data_hash is not None else tensors.tensor_hash(t)


def _by_content(candidates: list) -> list:
    """The (entry, tensor) pairs whose contents differ from their kept hash, hashed in one batch. For kernels that
    change a tensor without bumping its version counter: BatchNorm's running statistics, fused optimizers
    (`torch._fused_adamw_`). Such an entry's data is read again when written."""
    if not candidates:
        return []
    found = []
    for (entry, t), h in zip(candidates, tensors.hashes([t.detach() for _, t in candidates])):
        if h != entry.data_hash:
            entry.version = None
            found.append((entry, t))
    return found


class Tracker:
    """Tracked tensors of one process, by name, id and storage address."""

    def __init__(self, fmt: str, style: str) -> None:
        self.fmt = fmt
        self.sampler = style == "sampler"
        self.tensors: dict[str, _Tensor] = {}
        self.names_by_id: dict[int, tuple[str, str]] = {}  # id(tracked object) -> (name, type) for proxy_obj_names
        self.roots: dict[int, str] = {}  # id(tracked module) -> name
        self.by_ptr: dict[int, _Tensor] = {}
        self.models: dict[str, weakref.ref] = {}  # tracked name -> the module whose tensors it names
        self.module_ids: set[int] = set()  # ids of the tracked models' modules: a registration on one is a change
        self.changed_structure = False  # set by the registration hooks; the next check walks the models again
        self.emit = None
        self._next_id = itertools.count(1)  # identities of tracked tensors' data and grads: see `identify`

    def track(self, name: str, obj, emit) -> None:
        module = _unwrap(obj)
        if not hasattr(module, "named_parameters"):
            return
        self.emit = emit
        self.roots[id(module)] = name
        self.roots[id(obj)] = name
        self.names_by_id[id(obj)] = self.names_by_id[id(module)] = (name, type(module).__qualname__)
        try:
            self.models[name] = weakref.ref(module)
        except TypeError:  # not weakly referable: tracked as it is now
            self.models.pop(name, None)
        _watch_registrations(self)
        self._walk(name, module, f"track({name})", emit)

    def _walk(self, name: str, module, dump_loc: str, emit) -> None:
        """Record the tensors `module` holds that are not tracked yet (under `name`), forget those it no longer holds."""
        fresh, held = [], set()
        for path, t in [*module.named_parameters(), *module.named_buffers()]:
            var_name = f"{name}.{path}"
            held.add(var_name)
            entry = self.tensors.get(var_name)
            if entry is None or entry.ref() is not t:
                entry = _Tensor(var_name, t)
                self.tensors[var_name] = entry
                if entry.ptr:  # not a tensor without data (sparse: None; meta, jagged: 0, shared by all of them)
                    self.by_ptr[entry.ptr] = entry
                self.names_by_id[id(t)] = (var_name, entry.var_type)
                fresh.append((entry, t))
        prefix = name + "."
        for var_name in [v for v in self.tensors if v.startswith(prefix) and v not in held]:
            entry = self.tensors.pop(var_name)
            if self.by_ptr.get(entry.ptr) is entry:
                del self.by_ptr[entry.ptr]
            t = entry.ref()
            if t is not None and self.names_by_id.get(id(t), (None,))[0] == var_name:
                del self.names_by_id[id(t)]
        self.module_ids.update(id(m) for m in module.modules())
        self._write(fresh, "init", dump_loc, emit)

    def _rewalk(self) -> None:
        """After a registration on a tracked model: what each model holds now."""
        self.changed_structure = False
        self.module_ids = set()
        for name, ref in list(self.models.items()):
            module = ref()
            if module is not None:
                self._walk(name, module, f"track({name}) after an assignment", self.emit)

    def identify(self, entry: _Tensor, t) -> None:
        """Give the entry's data and grad their identities (`data_id`, `grad_id` in its records): numbers in the
        order the tracker first sees each, counted from 1 in every process, so that the same parameter has the same
        ids on every rank and in every run of the program. The data keeps its id while its storage is the same (a
        parameter updated in place keeps it; `p.data = other` or `model.double()` gives a new one); a grad keeps its
        id while it is the same tensor (zero_grad with `set_to_none` gives each step's grad a new one). Identities
        never come from addresses, which differ between runs and recur within one. 0 is none (no grad, no storage):
        an int as the others are, never equal to a `data` or `grad` value (with null, "grad equals grad_id" holds
        wherever both are null, and traincheck 0.2.0's check of that invariant fails on an assertion)."""
        ptr = _storage(t)
        if ptr != entry.data_id_ptr or entry.data_id is None:
            entry.data_id_ptr = ptr
            entry.data_id = 0 if ptr is None else next(self._next_id)
        grad = t.grad
        if grad is None:
            entry.grad_id, entry.grad_id_ref = 0, None
        elif entry.grad_id_ref is None or entry.grad_id_ref() is not grad:
            entry.grad_id_ref = weakref.ref(grad)
            entry.grad_id = next(self._next_id)

    def identify_all(self) -> None:
        """In a step the sampling skips: the identities the checks of a run recording everything would have given
        (in tracking order, as a check after `backward` gives the step's new grads theirs), so that a sampled run's
        ids are that run's."""
        if self.changed_structure:
            self._rewalk()
        for entry in self.tensors.values():
            t = entry.ref()
            if t is not None:
                self.identify(entry, t)

    def _write(self, pairs: list, mode: str, dump_loc: str, emit) -> None:
        if not pairs:
            return
        keep = self.fmt != "full"  # a hash or four statistics per tensor; not every value
        known = [entry.known(t) for entry, t in pairs] if keep else None
        attrs = tensors.attributes_batch([t for _, t in pairs], self.fmt, warn_once, known)
        for (entry, t), a in zip(pairs, attrs):
            entry.seen(t, a, keep, a["data"] if self.fmt == "hash" else None)
            self.identify(entry, t)
            a["data_id"], a["grad_id"] = entry.data_id, entry.grad_id
            emit(
                {
                    "type": "state_change",
                    "var_name": entry.var_name,
                    "var_type": entry.var_type,
                    "mode": mode,
                    "dump_loc": dump_loc,
                    "attributes": a,
                }
            )

    def check(self, dump_loc: str, emit, hash_buffers: bool = False) -> None:
        """Write a record for every tracked tensor that changed since it was last written (buffers compared by
        content too when `hash_buffers`: around the tracked model's forward)."""
        if self.changed_structure:
            self._rewalk()
        self._write_changed((lambda entry, t: entry.is_buffer) if hash_buffers else None, "update", dump_loc, emit)

    def check_stepped(self, dump_loc: str, emit, params) -> None:
        """`check` after an optimizer step: the parameters it holds are also compared by content, since fused
        optimizer kernels update them without bumping their version counters."""
        stepped = {id(p) for p in params}
        self._write_changed(lambda entry, t: id(t) in stepped, "update", dump_loc, emit)

    def _write_changed(self, compare, mode: str, dump_loc: str, emit) -> None:
        """Write the tensors that changed by their counters, or by content among those `compare` (if any) selects
        (whose hash was kept), in tracking order."""
        pairs, candidates = [], []
        for entry in self.tensors.values():
            t = entry.ref()
            if t is None:
                continue
            if entry.changed(t):
                pairs.append((entry, t))
            elif compare is not None and entry.data_hash is not None and compare(entry, t):
                pairs.append((entry, t))
                candidates.append((entry, t))
        if candidates:
            same = {id(entry) for entry, _ in candidates} - {id(entry) for entry, _ in _by_content(candidates)}
            pairs = [pair for pair in pairs if id(pair[0]) not in same]
        self._write(pairs, mode, dump_loc, emit)

    def snapshot(self, dump_loc: str, emit) -> None:
        """Sampler style: every tracked tensor, changed or not."""
        if self.changed_structure:
            self._rewalk()
        pairs = [(entry, t) for entry in self.tensors.values() if (t := entry.ref()) is not None]
        self._write(pairs, "sample", dump_loc, emit)

    def dirty_by_storage(self, t) -> bool:
        """An in-place call on a tensor sharing a tracked tensor's storage (`p.data.add_`, whose version counter is
        not the parameter's): force a record of that tensor. A tensor assigned to a tracked model since the last check
        is tracked from now on (an in-place call on it is then checked)."""
        if self.changed_structure:
            self._rewalk()
            if id(t) in self.names_by_id:
                return True
        entry = self.by_ptr.get(_storage(t)) if hasattr(t, "data_ptr") else None
        if entry is None:
            return False
        entry.version = None
        return True

    def proxy_names(self, owner, args) -> list:
        if self.changed_structure:
            self._rewalk()
        names = self.names_by_id
        found = [list(names[id(owner)])] if owner is not None and id(owner) in names else []
        for a in args:
            if id(a) in names:
                found.append(list(names[id(a)]))
        return found


_watching: list = []  # the tracker the registration hooks report to (one per process)


def _watch_registrations(tracker: Tracker) -> None:
    """Install torch's global registration hooks once: they only mark the tracker when a tracked model changes."""
    if _watching:
        _watching[0] = tracker
        return
    _watching.append(tracker)
    module = sys.modules["torch"].nn.modules.module
    for register in ("register_module_module_registration_hook", "register_module_parameter_registration_hook",
                     "register_module_buffer_registration_hook"):  # fmt: skip
        install = getattr(module, register, None)
        if install is not None:
            install(_registered)


def _registered(module, name, value) -> None:
    """A submodule, parameter or buffer is being assigned to `module`; returns None, so the assignment is unchanged."""
    tracker = _watching[0]
    if id(module) in tracker.module_ids:
        tracker.changed_structure = True


def _storage(t) -> int | None:
    """The address of the tensor's data; None for a tensor without one (a sparse grad)."""
    try:
        return t.data_ptr()
    except RuntimeError:
        return None


def _unwrap(obj):
    """DDP/DataParallel keep the model in `.module`, torch.compile in `._orig_mod`: track the parameters' owner."""
    for _ in range(4):
        inner = getattr(obj, "_orig_mod", None) or (
            getattr(obj, "module", None) if type(obj).__name__ in ("DistributedDataParallel", "DataParallel") else None
        )
        if inner is None:
            return obj
        obj = inner
    return obj


_MODULE_MUTATORS = frozenset(
    {"zero_grad", "load_state_dict", "to", "cuda", "cpu", "half", "float", "double", "bfloat16", "type", "apply",
     "_apply", "requires_grad_", "to_empty", "share_memory"}
)


# TrainCheck 0.2.0's engine never takes a call as the containing call of a relation when its name holds one of these
# (traincheck/config/config.py, ANALYSIS_SKIP_FUNC_NAMES): "._" leaves out every private function.
_ENGINE_SKIPS = (
    "cuda.is_available", "torch.get_default_dtype", "torch._VariableFunctionsClass", "torch.nn.modules.module.Module",
    "torch.cuda._is_compiled", "torch.is_grad_enabled", "torch._ops.OpOverload", "torch.utils.data._utils",
    "torch.distributed.utils._to_kwargs", "torch.distributed.utils._recursive_to", "torch.nn._reduction",
    "torch.nn.parallel.scatter_gather._is_namedtuple", "torch.nn.functional", "torch._tensor.Tensor.backward",
    "torch.autograd", "torch.optim.optimizer.Optimizer._optimizer_step_code", "torch.optim.optimizer._get_value",
    "torch.overrides", "._", "<locals>",
)


def contains_for_engine(name: str) -> bool:
    """Whether TrainCheck's engine can take a call of `name` as the containing call of a relation ("A changes X"):
    not a tensor method or a C function of `torch` (exported as `torch._C.TensorBase.*` and
    `torch._VariableFunctionsClass.*`), not a private function, nothing else its skip list names. A changing call
    it cannot take gets no state check of its own inside one that checks: the changes it makes are recorded by the
    enclosing call's check, inside its window (unless `track_inner_updates`)."""
    if name.startswith("torch.Tensor.") or name.count(".") == 1:
        return False
    return not any(skip in name for skip in _ENGINE_SKIPS)


def mutates(name: str) -> bool:
    """Whether a logged function can change model state (checked around its calls)."""
    if name.startswith(("torch.optim.", "torch.nn.utils.", "torch.nn.init.", "torch.autograd.")):
        return True
    if name == "torch._tensor.Tensor.backward":
        return True
    if name.startswith("torch.nn.modules.module.Module."):
        return name.rsplit(".", 1)[1] in _MODULE_MUTATORS
    return name.endswith("_") and not name.endswith("__")  # in-place tensor methods: add_, copy_, zero_
