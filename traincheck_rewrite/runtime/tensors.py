"""Tensor contents for state records, computed with tensor operations on the tensor's own device.

`hash`: the tensor's bits read as integers, multiplied by fixed odd pseudo-random weights and summed. A change of
any single element changes its product by (its bit difference x an odd weight), never 0 modulo the word size, so
even a one-ulp change always shows; NaN, +inf and -inf have different bits. The weights depend only on the
position, so the hash is the same across runs and processes. Tracking hashes the small tensors of a check in one
batch (`hashes`: copied side by side into a kept buffer, multiplied and summed by blocks), which gives each the value
it gets alone in a few tensor operations for all instead of five for each.

A tensor that is not a dense tensor with data (quantized, sparse, nested, mkldnn, meta, a layout torch adds later) is
read through an exact form of its contents (`_form`): its dequantized values, its indices and values, its parts'
sizes and values, its dense values; a meta tensor has none (`None`). Whatever torch refuses for one tensor leaves it
without contents (`None`) and one warning per kind: it never fails the others.
"""

from __future__ import annotations

import math
import os
import sys
import threading

from .values import readable
from .warn import warn_once

try:
    from . import _speedups
except ImportError:  # not built: tensor operations hash every tensor
    _speedups = None

FULL_CAP = 100_000  # elements written by `full` before the values are cut (with one warning)
BLOCK = 64  # words: a batch places each tensor at a multiple of it, so block sums never straddle two tensors
BATCH_MAX_WORDS = 1 << 16  # tensors larger than this are hashed one by one (their arithmetic outweighs a dispatch)
GROUP_MAX_WORDS = 1 << 22  # words hashed in one batch (the batch's buffers are kept for the next call)
_weights: dict = {}  # (numel, device, dtype) -> weights
_layouts: dict = {}  # (device, dtype, shapes) -> _Layout
_word_dtypes: dict = {}  # dtype -> whether its elements are hashed as 32-bit words (4 or 8 bytes, real)
_fixed: dict = {}  # (dtype, shape, device) -> the attributes of a state record they fix


def _torch():
    return sys.modules["torch"]


def _weights_for(n: int, device, dtype):
    key = (n, device, dtype)
    w = _weights.get(key)
    if w is None:
        torch = _torch()
        i = torch.arange(n, dtype=torch.int64, device=device)
        w = i * 6364136223846793005 + 1442695040888963407  # wraps mod 2**64 (a 64-bit LCG step)
        w = (w ^ (w >> 29)) * -4658895280553007687
        w = ((w ^ (w >> 32)) | 1).to(dtype)  # odd, also after truncation to 32 bits
        if len(_weights) > 256:
            _weights.clear()
        _weights[key] = w
    return w


def tensor_hash(t) -> int | None:
    """The hash; None for a tensor without readable contents (a meta tensor, or one torch refuses to read)."""
    if kind(t) is not None:
        return unusual_contents(t, "hash")
    try:
        torch = _torch()
        t = t.detach()
        if _speedups is not None and _in_place(t, torch):
            try:
                return _word_hash(t, torch)
            except Exception:  # never expected: tensor operations then
                pass
        return int(_hash_tensor(t).item())
    except Exception as exc:
        return refused(type(t).__name__, exc)


def kind(t) -> str | None:
    """None for a dense tensor with data, read as it is; else the name of its kind: quantized, nested, meta, or its
    layout (sparse_coo, sparse_csr, sparse_csc, sparse_bsr, sparse_bsc, jagged, _mkldnn, any layout torch adds)."""
    torch = _torch()
    layout = t.layout
    if layout is not torch.strided:
        return str(layout).removeprefix("torch.")
    if t.is_quantized:
        return "quantized"
    if t.is_nested:
        return "nested"
    if t.is_meta:
        return "meta"
    return None


_READ_AS = {  # kind -> what its contents are read as (the warning says it)
    "quantized": "their dequantized values",
    "meta": "their dtype, shape and device only: a meta tensor holds no values (data null)",
    "nested": "their parts' sizes and values (stats and full: their parts' values)",
    "jagged": "their parts' sizes and values (stats and full: their parts' values)",
}


def _form(t, kind: str, for_hash: bool):
    """An exact form of an unusual tensor's contents: dense tensors (for the hash a pair, hashed together: indices and
    values, or the parts' sizes and values), or None where it holds none (meta)."""
    torch = _torch()
    if kind == "meta":
        return None
    if kind == "quantized":
        return t.dequantize()
    if kind in ("nested", "jagged"):
        parts = t.unbind()
        values = torch.cat([p.reshape(-1) for p in parts]) if parts else torch.zeros(0, dtype=t.dtype)
        return (torch.tensor([list(p.shape) for p in parts], dtype=torch.int64), values) if for_hash else values
    if kind.startswith("sparse_") and for_hash:  # what is stored, not a dense copy (a sparse grad of nn.Embedding)
        coo = t.to_sparse_coo().coalesce()
        return coo.indices(), coo.values()
    return t.to_dense()  # sparse for stats and full, mkldnn, a layout torch adds


def unusual_contents(t, fmt: str, warn=warn_once):
    """The contents in `fmt` of a tensor that is not dense with data, from `_form`, with one warning per kind; None
    where it holds none or torch refuses to read it (then the warning says why)."""
    name = kind(t)
    try:
        form = _form(t.detach(), name, fmt == "hash")
        if form is None:
            value = None
        elif fmt == "hash" and type(form) is tuple:
            value = int((_hash_tensor(form[0]) * 1_000_003 + _hash_tensor(form[1])).item())
        elif fmt == "hash":
            value = int(_hash_tensor(form).item())
        else:
            value = tensor_stats(form) if fmt == "stats" else tensor_full(form, warn)
    except Exception as exc:  # a kind torch cannot read this way: the record keeps what can be said of it
        return refused(name, exc, warn)
    sparse_hash = fmt == "hash" and name.startswith("sparse_")
    read_as = _READ_AS.get(name, "their indices and values" if sparse_hash else "their dense values")
    warn(f"{name} tensors are recorded by {read_as}", key=f"tensor contents: {name}")
    return value


def refused(name: str, exc: Exception, warn=warn_once) -> None:
    """Contents torch refuses to give (a tensor subclass or kind whose operations fail): null, with one warning per
    kind of tensor."""
    warn(f"{name} tensors: their contents cannot be read ({type(exc).__name__}: {exc}); data and grad are null",
         key=f"tensor contents: {name}")


def _hash_tensor(t):
    """The hash as a 0-d int64 tensor on the tensor's device (no host synchronisation yet).

    Elements of 4 or 8 bytes are read as 32-bit words, multiplied and summed in 32 bits (a word's change times an odd
    weight is never 0 mod 2**32, and summing in the words' own width spares an 8-byte copy of every product: half the
    time of a 64-bit sum); narrower ones are widened to 64 bits first, so their products keep every bit.
    """
    torch = _torch()
    t = t.detach()
    if t.is_neg():  # a lazily negated view (torch._neg_view): its values, as a batch's copy reads them
        t = t.resolve_neg()
    if _in_words(t, torch) and t.is_contiguous():  # the common case, in fewer tensor operations
        bits = t.reshape(-1).view(torch.int32)
        return (bits * _weights_for(bits.numel(), bits.device, torch.int32)).sum(dtype=torch.int32).to(torch.int64)
    if t.numel() == 0:
        return torch.zeros((), dtype=torch.int64, device=t.device)
    flat = t.reshape(-1)
    if flat.is_complex():
        flat = torch.view_as_real(flat).reshape(-1)
    flat = flat.contiguous()
    if flat.dtype == torch.bool:
        bits = flat.to(torch.int64)
    elif flat.element_size() in (4, 8):
        bits = flat.view(torch.int32)
        return (bits * _weights_for(bits.numel(), bits.device, bits.dtype)).sum(dtype=torch.int32).to(torch.int64)
    else:
        bits = flat.view(torch.int16 if flat.element_size() == 2 else torch.uint8).to(torch.int64)
    return (bits * _weights_for(bits.numel(), bits.device, bits.dtype)).sum(dtype=torch.int64)


class _Layout:
    """A batch of same-device, same-dtype tensors copied into one buffer, each at a multiple of BLOCK words, with the
    weights each would get alone at the same places: the batch's hashes come from a handful of tensor operations."""

    def __init__(self, ts: list) -> None:
        torch = _torch()
        first = ts[0]
        per_word = first.element_size() // 4
        offsets, words, at = [], [], 0
        for t in ts:
            n = t.numel() * per_word
            offsets.append(at)
            words.append(n)
            at += -(-n // BLOCK) * BLOCK
        self.buffer = torch.zeros(at // per_word, dtype=first.dtype, device=first.device)
        self.views = [self.buffer[o // per_word : o // per_word + t.numel()].view(t.shape) for o, t in zip(offsets, ts)]
        self.weights = torch.zeros(at, dtype=torch.int32, device=first.device)
        for o, n in zip(offsets, words):
            self.weights[o : o + n] = _weights_for(n, first.device, torch.int32)
        last_blocks = [-(-(o + n) // BLOCK) - 1 for o, n in zip(offsets, words)]
        self.ends = torch.tensor(last_blocks, dtype=torch.int64, device=first.device)
        self.lock = threading.Lock()

    def hashes(self, ts: list) -> list[int]:
        """The hashes of `ts` (detached, shaped as the layout's), equal to `tensor_hash` of each."""
        torch = _torch()
        with self.lock:  # the buffer is shared: two threads may hash tensors of the same shapes at once
            torch._foreach_copy_(self.views, ts)
            blocks = (self.buffer.view(torch.int32) * self.weights).view(-1, BLOCK).sum(1, dtype=torch.int32)
        out, before = [], 0
        for total in blocks.cumsum(0, dtype=torch.int32).index_select(0, self.ends).tolist():
            h = (total - before) & 0xFFFFFFFF  # the tensor's own sum, modulo 2**32 as the running sum wraps
            out.append(h - (1 << 32) if h >= 1 << 31 else h)
            before = total
        return out


if hasattr(os, "register_at_fork"):  # a lock another thread held at a fork stays held in the child
    os.register_at_fork(after_in_child=_layouts.clear)


def _in_words(t, torch) -> bool:
    """Whether the tensor's elements are hashed as 32-bit words (4 or 8 bytes, real)."""
    words = _word_dtypes.get(t.dtype)
    if words is None:
        words = _word_dtypes[t.dtype] = (
            t.element_size() in (4, 8) and not t.is_complex() and t.dtype != torch.bool and not t.is_quantized
        )
    return words


def _batchable(t, torch) -> bool:
    """Strided, of 4 or 8 bytes, not too large (a strided nested or meta tensor passes: its batch fails and is hashed
    one by one, so that the common case reads nothing more)."""
    return t.layout is torch.strided and _in_words(t, torch) and 0 < t.numel() * (t.element_size() // 4) <= BATCH_MAX_WORDS


def _in_place(t, torch) -> bool:
    """A plain contiguous tensor of 32-bit words in host memory, which `_speedups.word_hash` reads where it lies."""
    return (type(t) is torch.Tensor and t.is_cpu and t.layout is torch.strided and _in_words(t, torch)
            and not t.is_nested and t.is_contiguous() and not t.is_neg())  # fmt: skip


def _word_hash(t, torch) -> int:
    """`word_hash` of `t`, which the caller holds; the weights are held here while C reads them (the cache of
    weights may be cleared by another thread meanwhile)."""
    words = t.numel() * (t.element_size() // 4)
    weights = _weights_for(words, t.device, torch.int32)
    return _speedups.word_hash(t.data_ptr(), words, weights.data_ptr())


def hashes(items: list) -> list[int]:
    """`tensor_hash` of each (detached) tensor: tensors in host memory read in place by the C speedups where built
    (no copy, no product tensor); else small tensors of one device and dtype in one batch of a few tensor operations
    (instead of five each: most of tracking's cost per step on small models), the others one by one; one host
    synchronisation per batch and per device."""
    torch = _torch()
    out: list = [None] * len(items)
    groups: dict = {}  # (device, dtype) -> indices of batchable tensors
    alone: dict = {}  # device -> indices of tensors hashed one by one
    for i, t in enumerate(items):
        if _speedups is not None and _in_place(t, torch):
            try:
                out[i] = _word_hash(t, torch)
                continue
            except Exception:  # never expected: the tensor goes the way of the others
                pass
        if _batchable(t, torch):
            groups.setdefault((t.device, t.dtype), []).append(i)
        elif kind(t) is None:
            alone.setdefault(t.device, []).append(i)
        else:  # one by one, never failing the others
            out[i] = unusual_contents(t, "hash")
    for indices in groups.values():
        for chunk in _chunks(indices, items):
            if len(chunk) == 1:
                alone.setdefault(items[chunk[0]].device, []).append(chunk[0])
                continue
            ts = [items[i] for i in chunk]
            try:
                key = (ts[0].device, ts[0].dtype, tuple(t.shape for t in ts))
                layout = _layouts.get(key)
                if layout is None:
                    if len(_layouts) > 64:
                        _layouts.clear()
                    layout = _layouts[key] = _Layout(ts)
                for i, h in zip(chunk, layout.hashes(ts)):
                    out[i] = h
            except Exception:  # a nested or meta tensor, a subclass whose operations fail: each alone
                for i in chunk:
                    out[i] = tensor_hash(items[i])
    for indices in alone.values():
        try:
            for i, h in zip(indices, torch.stack([_hash_tensor(items[i]) for i in indices]).tolist()):
                out[i] = h
        except Exception:
            for i in indices:
                out[i] = tensor_hash(items[i])
    return out


def _chunks(indices: list, items: list):
    """`indices` cut into runs of at most GROUP_MAX_WORDS words."""
    start, size = 0, 0
    for end, i in enumerate(indices):
        words = items[i].numel() * (items[i].element_size() // 4)
        if end > start and size + words > GROUP_MAX_WORDS:
            yield indices[start:end]
            start, size = end, 0
        size += words
    yield indices[start:]


def _num(v: float):
    return v if math.isfinite(v) else None  # NaN/inf are not JSON; written as null


def tensor_stats(t) -> dict:
    torch = _torch()
    t = t.detach()
    if t.numel() == 0:
        return {"min": None, "max": None, "mean": None, "std": None, "shape": list(t.shape)}
    f = t.to(torch.float64) if not t.is_complex() else t.abs().to(torch.float64)
    values = torch.stack([f.min(), f.max(), f.mean(), f.std() if f.numel() > 1 else f.new_zeros(())]).tolist()
    mn, mx, mean, std = (_num(v) for v in values)
    return {"min": mn, "max": mx, "mean": mean, "std": std, "shape": list(t.shape)}


def tensor_full(t, warn) -> list:
    t = t.detach()
    if t.numel() > FULL_CAP:
        warn(f"tensor_dump_format full: tensors over {FULL_CAP} elements are written as their first {FULL_CAP} values")
        t = t.reshape(-1)[:FULL_CAP]
    return [_num(v) if isinstance(v, float) else v for v in t.reshape(-1).tolist()]


def contents(t, fmt: str, warn):
    if t is None:
        return None
    if kind(t) is not None:
        return unusual_contents(t, fmt, warn)
    if fmt == "hash":
        return tensor_hash(t)
    try:
        return tensor_stats(t) if fmt == "stats" else tensor_full(t, warn)
    except Exception as exc:
        return refused(type(t).__name__, exc, warn)


UNKNOWN = object()  # in `known`: contents to compute


def attributes_batch(items: list, fmt: str, warn, known: list | None = None) -> list[dict]:
    """TrainCheck's primitive tensor attributes plus `data` and `grad` contents in `fmt`, for several tensors, with
    every key every time (and `layout` for a tensor of an unusual kind); `known` gives (data, grad) contents still
    valid for each tensor, or UNKNOWN. Hashes are computed together (`hashes`)."""
    out, pending = [], []  # pending: (attrs dict, key, tensor to hash)
    for i, t in enumerate(items):
        try:
            grad = t.grad
            key = (t.dtype, t.shape, t.device, t.layout)
            fixed = _fixed.get(key)
            if fixed is None:
                if len(_fixed) > 4096:
                    _fixed.clear()
                fixed = _fixed[key] = _fixed_attributes(t)
            attrs = {
                "dtype": fixed[0],
                "shape": fixed[1],  # a tuple, written as a JSON array: shared by the records of tensors alike
                "device": fixed[2],
                "requires_grad": t.requires_grad,
                "is_leaf": t.is_leaf,
                "ndim": fixed[3],
                "numel": fixed[4],
                "is_cpu": fixed[5],
                "data": None,
                "grad": None,
            }
            if fixed[6]:
                attrs["layout"] = fixed[6]
        except Exception:  # an attribute torch refuses to give (a nested tensor's shape): what can be read
            grad = readable(t, "grad")
            attrs = readable_attributes(t)
        data_known, grad_known = known[i] if known is not None else (UNKNOWN, UNKNOWN)
        for key, value, value_known in (("data", t, data_known), ("grad", grad, grad_known)):
            if value is None:
                continue
            if value_known is not UNKNOWN:
                attrs[key] = value_known
            elif fmt == "hash":
                pending.append((attrs, key, value.detach()))
            else:
                attrs[key] = contents(value, fmt, warn)
        out.append(attrs)
    if pending:
        for (attrs, key, _), h in zip(pending, hashes([e[2] for e in pending])):
            attrs[key] = h
    return out


def _fixed_attributes(t) -> tuple:
    """What (dtype, shape, device, layout) fix of a state record, and the layout to write for a tensor of an unusual
    kind (else None); a dimension torch gives as a symbol (a jagged tensor's) is null."""
    shape = tuple(d if type(d) is int else None for d in t.shape)
    return (str(t.dtype), shape, str(t.device), t.ndim, t.numel(), t.is_cpu, str(t.layout) if kind(t) else None)


def readable_attributes(t) -> dict:
    """The record's attributes one by one, each null where torch refuses to read it."""
    shape = readable(t, "shape")
    return {
        "dtype": str(t.dtype),
        "shape": None if shape is None else [d if type(d) is int else None for d in shape],
        "device": str(readable(t, "device")),
        "requires_grad": readable(t, "requires_grad"),
        "is_leaf": readable(t, "is_leaf"),
        "ndim": readable(t, "ndim"),
        "numel": readable(t, "numel"),
        "is_cpu": readable(t, "is_cpu"),
        "data": None,
        "grad": None,
        "layout": str(t.layout),
    }
