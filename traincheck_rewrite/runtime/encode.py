"""Records as the logged call keeps them (tuples) and as the trace holds them (JSON lines, trace-format.md).

The hot path appends a tuple per record: no dict, no JSON. A batch is encoded when it is written (writer.py): the
fields that vary from call to call (id, time, object, parent) are formatted per record; the rest of a record (type,
function, process, thread, meta variables, site, argument envelopes, already JSON from values.encoded) is the same
for many records of a batch and made once per distinct combination. Times are made strictly increasing per file.

`encode` runs in C when `_speedups` is built (setup.py; about a quarter of the time); `encode_in_python` is the
reference it must equal byte for byte (tests/test_speedups.py) and what runs without a compiler.
"""

from __future__ import annotations

import orjson

from . import meta as _meta
from .lookup import BOUND_JSON, NAME_JSON
from .warn import warn_once

PRE, POST, EXC, DICT = 0, 1, 2, 3
# (PRE, n, time, meta, info, site, obj_id, parent n, argument envelopes (JSON, self first), {kwarg: JSON} | None, proxies)
# (POST, n, time, meta, info, parent n, return envelope JSON)
# (EXC, n, time, meta, info, parent n, exception type name, message)
# (DICT, None, time, meta | None, record dict): state records (meta, time, process, thread added), or a finished dict

_ARGS = ["{" + ",".join('"%d":%%s' % i for i in range(n)) + "}" for n in range(17)]
_NEWLINE = orjson.OPT_APPEND_NEWLINE


def _json(v) -> str:
    return orjson.dumps(v).decode()


def _args(envs: tuple) -> str:
    if len(envs) < len(_ARGS):
        return _ARGS[len(envs)] % envs
    return "{" + ",".join(f'"{i}":{e}' for i, e in enumerate(envs)) + "}"


def _kwargs(kwargs: dict | None) -> str:
    if not kwargs:
        return "{}"
    return "{" + ",".join(f"{_json(k)}:{v}" for k, v in kwargs.items()) + "}"


def relabelled(meta: dict) -> dict:
    """The meta variables of a held record made in the training loop's first iteration: step 1, stage training
    (unless the program sets the stage itself), as in its later iterations: `init`, and `evaluation` made with grad on
    and a tracked model in eval mode in that loop's own iteration (steps.py), become `training`."""
    if meta.get("step", 0) != 0:
        return meta
    stage = meta.get("stage")
    training = not _meta.program_stage and (stage == "init" or id(meta) in _meta.training_after_all)
    return {**meta, "step": 1, "stage": "training" if training else stage}


def _dict_line(record: dict, t: int, pid: int, tid: int, meta: dict | None) -> bytes | None:
    """A state record's line, with its time, process, thread and meta variables (None: a finished record)."""
    if meta is not None:
        record["time"], record["process_id"], record["thread_id"], record["meta_vars"] = t, pid, tid, meta
    try:
        return orjson.dumps(record, option=_NEWLINE)
    except Exception as exc:
        warn_once(f"a record could not be encoded ({exc}); it is skipped")
        return None


def encode(records: list, pid: int, tid: int, last_time: int, since: int | None = None) -> tuple[bytes, int]:
    """JSON lines of `records` and the last time written; records from time `since` on get `relabelled` meta."""
    if _c_encode is not None:
        return _c_encode(records, pid, tid, last_time, since)
    return encode_in_python(records, pid, tid, last_time, since)


def encode_in_python(records: list, pid: int, tid: int, last_time: int, since: int | None = None) -> tuple[bytes, int]:
    """`encode` in Python: the reference."""
    out = []
    append = out.append
    metas: dict[int, str] = {}  # id(meta) -> JSON; the records keep the dicts (and infos) alive while this runs
    moved: dict[int, dict] = {}
    tails: dict = {}  # what follows the varying fields, per distinct combination
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
            line = _dict_line(r[4], t, pid, tid, meta)
            if line is not None:
                append(line)
            continue
        meta_json = metas.get(id(meta))
        if meta_json is None:
            meta_json = metas[id(meta)] = _json(meta)
        info = r[4]
        parent = r[7] if kind == PRE else r[5]
        parent = "null" if parent is None else base + parent
        if kind == PRE:
            obj_id = r[6]
            kwargs, proxies = r[9], r[10]
            key = (id(info), r[5], meta_json, r[8]) if not (kwargs or proxies) else None
            tail = tails.get(key) if key is not None else None
            if tail is None:
                site = r[5]
                tail = (
                    f'"function":{info[NAME_JSON]},"process_id":{pid},"thread_id":{tid},"meta_vars":{meta_json},'
                    f'"is_bound_method":{info[BOUND_JSON]},"site":{site if type(site) is int else _json(site)},'
                    f'"args":{_args(r[8])},"kwargs":{_kwargs(kwargs)},"proxy_obj_names":{_json(proxies) if proxies else "[]"}}}\n'
                )
                tail = tail.encode()
                if key is not None:
                    tails[key] = tail
            append(
                f'{{"type":"function_call (pre)","func_call_id":{base + r[1]},"time":{t},'
                f'"obj_id":{"null" if obj_id is None else obj_id},"parent_id":{parent},'.encode()
            )
            append(tail)
        elif kind == POST:
            key = (id(info), meta_json, r[6])
            tail = tails.get(key)
            if tail is None:
                tail = tails[key] = (
                    f'"function":{info[NAME_JSON]},"process_id":{pid},"thread_id":{tid},"meta_vars":{meta_json},'
                    f'"return_values":{r[6]}}}\n'
                ).encode()
            append(f'{{"type":"function_call (post)","func_call_id":{base + r[1]},"time":{t},"parent_id":{parent},'.encode())
            append(tail)
        else:
            append(
                f'{{"type":"function_call (post) (exception)","func_call_id":{base + r[1]},"time":{t},"parent_id":{parent},'
                f'"function":{info[NAME_JSON]},"process_id":{pid},"thread_id":{tid},"meta_vars":{meta_json},'
                f'"exception":{_json(r[6])},"exception_msg":{_json(r[7])}}}\n'.encode()
            )
    return b"".join(out), last_time


try:
    from . import _speedups
except ImportError:  # not built: no compiler where it was installed
    _c_encode = None
else:
    _speedups.configure(_json, relabelled, _dict_line, _kwargs)
    _c_encode = _speedups.encode
