"""Records as the logged call keeps them (tuples) and as the trace holds them (JSON lines, trace-format.md).

The hot path appends a tuple per record: no dict, no JSON. A batch is encoded at once when it is written
(writer.py): the JSON of each meta-variables dict once per batch, argument envelopes already JSON (values.encoded,
once per kind of tensor), the rest filled into a byte template. Times are made strictly increasing per file here.
"""

from __future__ import annotations

import orjson

from .lookup import BOUND_JSON, NAME_JSON
from .warn import warn_once

PRE, POST, EXC, DICT = 0, 1, 2, 3
# (PRE, n, time, meta, info, site, obj_id, parent n, argument envelopes (JSON, self first), {kwarg: JSON} | None, proxies)
# (POST, n, time, meta, info, parent n, return envelope JSON)
# (EXC, n, time, meta, info, parent n, exception type name, message)
# (DICT, None, time, meta | None, record dict): state records (meta, time, process, thread added), or a finished dict

_PRE = (
    b'{"type":"function_call (pre)","func_call_id":%d,"function":%s,"time":%d,"process_id":%d,"thread_id":%d,'
    b'"meta_vars":%s,"is_bound_method":%s,"obj_id":%s,"parent_id":%s,"site":%s,"args":%s,"kwargs":%s,'
    b'"proxy_obj_names":%s}\n'
)
_POST = (
    b'{"type":"function_call (post)","func_call_id":%d,"function":%s,"time":%d,"process_id":%d,"thread_id":%d,'
    b'"meta_vars":%s,"parent_id":%s,"return_values":%s}\n'
)
_EXC = (
    b'{"type":"function_call (post) (exception)","func_call_id":%d,"function":%s,"time":%d,"process_id":%d,'
    b'"thread_id":%d,"meta_vars":%s,"parent_id":%s,"exception":%s,"exception_msg":%s}\n'
)
_ARGS = [b"{" + b",".join(b'"%d":%%s' % i for i in range(n)) + b"}" for n in range(17)]
_NULL = b"null"
_dumps = orjson.dumps
_NEWLINE = orjson.OPT_APPEND_NEWLINE


def _args(envs: tuple) -> bytes:
    if len(envs) < len(_ARGS):
        return _ARGS[len(envs)] % envs
    return b"{" + b",".join(b'"%d":%s' % pair for pair in enumerate(envs)) + b"}"


def _kwargs(kwargs: dict | None) -> bytes:
    if not kwargs:
        return b"{}"
    return b"{" + b",".join(_dumps(k) + b":" + v for k, v in kwargs.items()) + b"}"


def relabelled(meta: dict) -> dict:
    """The meta variables of a held record made in the training loop's first iteration: step 1, stage training."""
    if meta.get("step", 0) != 0:
        return meta
    return {**meta, "step": 1, "stage": "training" if meta.get("stage") == "init" else meta.get("stage")}


def encode(records: list, pid: int, tid: int, last_time: int, since: int | None = None) -> tuple[bytes, int]:
    """JSON lines of `records` and the last time written; records from time `since` on get `relabelled` meta."""
    out = []
    append = out.append
    metas: dict[int, bytes] = {}  # id(meta) -> JSON; the records keep the dicts alive while this runs
    moved: dict[int, dict] = {}
    base = pid * 1_000_000_000
    for r in records:
        t = r[2]
        meta = r[3]
        if since is not None and t >= since and meta is not None:
            new = moved.get(id(meta))
            if new is None:
                new = moved[id(meta)] = relabelled(meta)
            meta = new
        if t <= last_time:
            t = last_time + 1
        last_time = t
        kind = r[0]
        if kind == DICT:
            record = r[4]
            if meta is not None:
                record["time"], record["process_id"], record["thread_id"], record["meta_vars"] = t, pid, tid, meta
            try:
                append(_dumps(record, option=_NEWLINE))
            except Exception as exc:
                warn_once(f"a record could not be encoded ({exc}); it is skipped")
            continue
        meta_json = metas.get(id(meta))
        if meta_json is None:
            meta_json = metas[id(meta)] = _dumps(meta)
        info = r[4]
        if kind == PRE:
            obj_id, parent, site, proxies = r[6], r[7], r[5], r[10]
            append(_PRE % (
                base + r[1], info[NAME_JSON], t, pid, tid, meta_json, info[BOUND_JSON],
                _NULL if obj_id is None else b"%d" % obj_id,
                _NULL if parent is None else b"%d" % (base + parent),
                b"%d" % site if type(site) is int else _dumps(site),
                _args(r[8]), _kwargs(r[9]), _dumps(proxies) if proxies else b"[]",
            ))  # fmt: skip
        elif kind == POST:
            parent = r[5]
            append(_POST % (
                base + r[1], info[NAME_JSON], t, pid, tid, meta_json, _NULL if parent is None else b"%d" % (base + parent), r[6]
            ))  # fmt: skip
        else:
            parent = r[5]
            append(_EXC % (
                base + r[1], info[NAME_JSON], t, pid, tid, meta_json, _NULL if parent is None else b"%d" % (base + parent),
                _dumps(r[6]), _dumps(r[7]),
            ))  # fmt: skip
    return b"".join(out), last_time
