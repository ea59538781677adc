"""Tensor contents for state records, computed with tensor operations on the tensor's own device.

`hash`: the tensor's bits read as integers, multiplied by fixed odd pseudo-random weights and summed. A change of
any single element changes its product by (its bit difference x an odd weight), never 0 modulo the word size, so
even a one-ulp change always shows; NaN, +inf and -inf have different bits. The weights depend only on the
position, so the hash is the same across runs and processes.
"""

from __future__ import annotations

import math
import sys

FULL_CAP = 100_000  # elements written by `full` before the values are cut (with one warning)
_weights: dict = {}  # (numel, device, dtype) -> weights
_word_dtypes: dict = {}  # dtype -> whether its elements are hashed as 32-bit words (4 or 8 bytes, real)


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


def tensor_hash(t) -> int:
    return int(_hash_tensor(t).item())


def _hash_tensor(t):
    """The hash as a 0-d int64 tensor on the tensor's device (no host synchronisation yet).

    Elements of 4 or 8 bytes are read as 32-bit words, multiplied and summed in 32 bits (a word's change times an odd
    weight is never 0 mod 2**32, and summing in the words' own width spares an 8-byte copy of every product: half the
    time of a 64-bit sum); narrower ones are widened to 64 bits first, so their products keep every bit.
    """
    torch = _torch()
    t = t.detach()
    if t.layout is not torch.strided:  # a sparse grad (nn.Embedding(sparse=True)): its entries, not a dense copy
        if t.layout is not torch.sparse_coo:
            return _hash_tensor(t.to_dense())
        t = t.coalesce()
        return _hash_tensor(t.indices()) * 1_000_003 + _hash_tensor(t.values())
    words = _word_dtypes.get(t.dtype)
    if words is None:
        words = _word_dtypes[t.dtype] = t.element_size() in (4, 8) and not t.is_complex() and t.dtype != torch.bool
    if words and t.is_contiguous():  # the common case, in fewer tensor operations
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
    if fmt == "hash":
        return tensor_hash(t)
    if fmt == "stats":
        return tensor_stats(t)
    return tensor_full(t, warn)


UNKNOWN = object()  # in `known`: contents to compute


def attributes_batch(items: list, fmt: str, warn, known: list | None = None) -> list[dict]:
    """TrainCheck's primitive tensor attributes plus `data` and `grad` contents in `fmt`, for several tensors, with
    every key every time; `known` gives (data, grad) contents still valid for each tensor, or UNKNOWN. Hashes are
    brought to the host together: one synchronisation per device per batch."""
    torch = _torch()
    out, pending = [], {}  # device -> [(attrs dict, key, 0-d hash tensor)]
    for i, t in enumerate(items):
        grad = t.grad
        attrs = {
            "dtype": str(t.dtype),
            "shape": list(t.shape),
            "device": str(t.device),
            "requires_grad": t.requires_grad,
            "is_leaf": t.is_leaf,
            "ndim": t.ndim,
            "numel": t.numel(),
            "is_cpu": t.is_cpu,
            "data": None,
            "grad": None,
        }
        data_known, grad_known = known[i] if known is not None else (UNKNOWN, UNKNOWN)
        for key, value, value_known in (("data", t, data_known), ("grad", grad, grad_known)):
            if value is None:
                continue
            if value_known is not UNKNOWN:
                attrs[key] = value_known
                continue
            if fmt == "hash":
                pending.setdefault(value.device, []).append((attrs, key, _hash_tensor(value)))
            else:
                attrs[key] = contents(value, fmt, warn)
        out.append(attrs)
    for entries in pending.values():
        for (attrs, key, _), h in zip(entries, torch.stack([e[2] for e in entries]).tolist()):
            attrs[key] = h
    return out
