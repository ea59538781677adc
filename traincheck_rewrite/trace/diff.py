"""diff_job(): where two runs (or two ranks of one run) first differ, streaming both traces side by side.

Processes are paired by rank (then DataLoader worker id, then start order), threads of a pair by start order (main
thread first). Each pair of streams is cut into runs of records with the same `meta_vars.step` and compared step by
step, so memory holds one step's state records and a few counters, never a trace:

- tensors: per step, the sequence of `attributes` (hash or stats of data and grad, dtype, shape, ...) of every
  tracked variable's state records, merged over the process's threads by time;
- calls: per step and thread, the API records position by position, on what does not change from run to run of
  the same program: type, function, call site (file:line:column, not the site number), stage, arguments' and return
  envelopes, exception. Times, pids, thread ids, call ids and object ids are ignored.

A positional comparison counts every record after a missing call in that step as different; the per-step counts
therefore also list, by function and site, the calls one side made more often than the other.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field
from itertools import groupby, zip_longest

import orjson

from .job import Job, Process, RunFolder
from .reader import ReadStats

PRE = "function_call (pre)"
_CUT = 300  # characters of a differing value shown
MAX_STEPS = 1000  # differing steps reported in detail; beyond them only counted (two runs apart from step 1 on)


def _step(record: dict):
    meta = record.get("meta_vars")
    step = meta.get("step") if isinstance(meta, dict) else None
    return step if type(step) is int else None


def _order(step) -> int:
    return -1 if step is None else step


def _stage(record: dict):
    meta = record.get("meta_vars")
    return meta.get("stage") if isinstance(meta, dict) else None


def _cut(value) -> str:
    text = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode() if not isinstance(value, str) else value
    return text if len(text) <= _CUT else text[: _CUT - 3] + "..."


@dataclass
class StepDiff:
    step: int | None
    calls_a: int = 0
    calls_b: int = 0
    differing_records: int = 0  # positions in the step where the records differ (or one side has none)
    only_a: Counter = field(default_factory=Counter)  # (function, where) -> calls A made more often than B
    only_b: Counter = field(default_factory=Counter)
    tensors: set = field(default_factory=set)  # names of variables whose state records differ

    def as_dict(self) -> dict:
        return {
            "step": self.step,
            "calls_a": self.calls_a,
            "calls_b": self.calls_b,
            "differing_records": self.differing_records,
            "tensors": sorted(self.tensors),
            "only_a": [{"function": f, "site": w, "count": n} for (f, w), n in sorted(self.only_a.items(), key=str)],
            "only_b": [{"function": f, "site": w, "count": n} for (f, w), n in sorted(self.only_b.items(), key=str)],
        }


class _Side:
    """One side of a comparison: a run folder, with site numbers mapped to file:line:column once each."""

    def __init__(self, run: RunFolder):
        self.run = run
        self._where: dict = {}

    def location(self, site):
        if isinstance(site, str) or site is None:
            return site
        loc = self._where.get(site)
        if loc is None:
            entry = self.run.sites.get(str(site))
            loc = (entry.get("file"), entry.get("line"), entry.get("col")) if isinstance(entry, dict) else site
            self._where[site] = loc
        return loc

    def where(self, site) -> str | None:
        return self.run.site(site)["where"]


_FIELDS = ("type", "function", "site", "stage", "is_bound_method", "args", "kwargs", "proxy_obj_names",
           "return_values", "exception", "exception_msg")


def _differing_fields(a: dict, sa: _Side, b: dict, sb: _Side) -> list[str]:
    out = []
    for name in _FIELDS:
        if name == "site":
            if sa.location(a.get("site")) != sb.location(b.get("site")):
                out.append(name)
        elif name == "stage":
            if _stage(a) != _stage(b):
                out.append(name)
        elif a.get(name) != b.get(name):
            out.append(name)
    return out


class Differ:
    def __init__(self, a: list[Process], b: list[Process]):
        self.a, self.b = a, b
        self.steps: dict = {}  # step -> StepDiff, only steps with a difference, at most MAX_STEPS
        self.more_steps: set = set()  # further differing steps, beyond the MAX_STEPS lowest
        self.first_call: dict | None = None
        self.first_tensor: dict | None = None
        self.unmatched: dict = {"a": [], "b": []}
        self.pairs: list = []
        self.stats_a, self.stats_b = ReadStats(), ReadStats()

    def _step_diff(self, step) -> StepDiff:
        """The step's record of differences; past MAX_STEPS steps a throwaway one, the step only counted (the
        lowest steps are kept: a later pair of streams can still bring a lower one, which evicts the highest)."""
        d = self.steps.get(step)
        if d is not None:
            return d
        d = StepDiff(step)
        if step in self.more_steps:
            return d
        if len(self.steps) >= MAX_STEPS:
            highest = max(self.steps, key=_order)
            if _order(step) > _order(highest):
                self.more_steps.add(step)
                return d
            del self.steps[highest]
            self.more_steps.add(highest)
        self.steps[step] = d
        return d

    # pairing -------------------------------------------------------------------------------------------------------
    @staticmethod
    def _keys(processes: list[Process]) -> list[tuple]:
        seen: Counter = Counter()
        keys = []
        for p in sorted(processes, key=lambda p: (p.first_time or 0, p.pid)):
            ident = (p.rank, p.worker_id)
            keys.append((ident + (seen[ident],), p))
            seen[ident] += 1
        return keys

    def run(self) -> dict:
        if len(self.a) == 1 and len(self.b) == 1:  # two single processes (two ranks, or two plain runs)
            pairs = [(self.a[0], self.b[0])]
        else:
            ka, kb = dict(self._keys(self.a)), dict(self._keys(self.b))
            order = {id(p): n for n, p in enumerate(self.a)}  # the job's order: by rank
            pairs = sorted(((ka[k], kb[k]) for k in ka if k in kb), key=lambda pair: order[id(pair[0])])
            self.unmatched = {"a": [ka[k].label for k in ka if k not in kb], "b": [kb[k].label for k in kb if k not in ka]}
        for pa, pb in pairs:
            self.pairs.append([pa.label, pb.label])
            sa, sb = _Side(pa.run), _Side(pb.run)
            self._tensors(pa, pb)
            ta, tb = pa.threads(), pb.threads()
            for n, (tid_a, tid_b) in enumerate(zip_longest(ta, tb)):
                self._calls(pa, pb, sa, sb, n, tid_a, tid_b)
        return self.result()

    # tensors -------------------------------------------------------------------------------------------------------
    def _state_stream(self, p: Process, stats: ReadStats):
        streams = [s.records(stats) for s in p.sources_of("VAR")]
        return heapq.merge(*streams, key=lambda r: r.get("time") if type(r.get("time")) is int else 0)

    @staticmethod
    def _by_var(records) -> dict:
        out: dict = {}
        for r in records:
            out.setdefault(r.get("var_name"), []).append(r.get("attributes"))
        return out

    def _tensors(self, pa: Process, pb: Process) -> None:
        ga = groupby(self._state_stream(pa, self.stats_a), key=_step)
        gb = groupby(self._state_stream(pb, self.stats_b), key=_step)
        for step, va, vb in _lockstep(ga, gb):
            va, vb = self._by_var(va), self._by_var(vb)
            found = []
            for name in sorted(set(va) | set(vb), key=str):
                ra, rb = va.get(name, []), vb.get(name, [])
                if ra == rb:
                    continue
                attrs = {k for x, y in zip(ra, rb) if x != y for k in _changed(x, y)}
                longer = ra if len(ra) > len(rb) else rb
                for i in range(min(len(ra), len(rb)), len(longer)):  # an extra record: what it changed
                    attrs.update(_changed(longer[i - 1] if i else {}, longer[i]))
                attrs = sorted(attrs)
                found.append({"name": name, "attributes": attrs, "records_a": len(ra), "records_b": len(rb)})
            if not found:
                continue
            self._step_diff(step).tensors.update(f["name"] for f in found)
            if self.first_tensor is None or _order(step) < _order(self.first_tensor["step"]):
                self.first_tensor = {"step": step, "process_a": pa.label, "process_b": pb.label, "tensors": found}

    # calls ---------------------------------------------------------------------------------------------------------
    def _calls(self, pa, pb, sa: _Side, sb: _Side, thread: int, tid_a, tid_b) -> None:
        def stream(p, tid, stats):
            return (r for s in (p.sources_of("API", tid) if tid is not None else []) for r in s.records(stats))

        ga = groupby(stream(pa, tid_a, self.stats_a), key=_step)
        gb = groupby(stream(pb, tid_b, self.stats_b), key=_step)
        for step, ra, rb in _lockstep(ga, gb):
            d = self.steps.get(step)  # a step whose tensors differ gets its call counts too
            calls = Counter()  # (function, where) -> calls in A minus calls in B
            n_a = n_b = 0
            position = 0  # calls (pre records) before this record in the step, on A's side
            for a, b in zip_longest(ra, rb):
                if a is not None and a.get("type") == PRE:
                    n_a += 1
                    calls[(a.get("function"), sa.where(a.get("site")))] += 1
                if b is not None and b.get("type") == PRE:
                    n_b += 1
                    calls[(b.get("function"), sb.where(b.get("site")))] -= 1
                if a is not None and b is not None:
                    fields = _differing_fields(a, sa, b, sb)
                else:
                    fields = ["missing"]
                if fields:
                    d = d or self._step_diff(step)
                    d.differing_records += 1
                    if self.first_call is None or _order(step) < _order(self.first_call["step"]):
                        self.first_call = self._call_report(step, pa, pb, thread, position, fields, a, sa, b, sb)
                if a is not None and a.get("type") == PRE:
                    position += 1
            if d is not None or n_a != n_b:
                d = d or self._step_diff(step)
                d.calls_a += n_a
                d.calls_b += n_b
                for key, n in calls.items():
                    if n > 0:
                        d.only_a[key] += n
                    elif n < 0:
                        d.only_b[key] -= n

    def _call_report(self, step, pa, pb, thread, position, fields, a, sa, b, sb) -> dict:
        def side(r, s: _Side):
            if r is None:
                return None
            site = s.run.site(r.get("site"))
            out = {"type": r.get("type"), "function": r.get("function"), "site": site["where"], "source": site["source"],
                   "stage": _stage(r)}
            for name in fields:
                if name not in ("type", "function", "site", "stage", "missing"):
                    out[name] = _cut(r.get(name))
            return out

        return {"step": step, "process_a": pa.label, "process_b": pb.label, "thread": thread, "call": position + 1,
                "fields": fields, "a": side(a, sa), "b": side(b, sb)}

    def result(self) -> dict:
        steps = [self.steps[k].as_dict() for k in sorted(self.steps, key=_order)]
        equal = not steps and not self.unmatched["a"] and not self.unmatched["b"]
        return {
            "equal": equal,
            "differing_steps": len(steps) + len(self.more_steps),
            "pairs": self.pairs,
            "unmatched_processes": self.unmatched,
            "first_tensor_difference": self.first_tensor,
            "first_call_difference": self.first_call,
            "steps": steps,
            "records": {"a": self.stats_a.records, "b": self.stats_b.records},
            "truncated_files": {"a": len(self.stats_a.truncated_files), "b": len(self.stats_b.truncated_files)},
        }


def _changed(x, y) -> set:
    x, y = x if isinstance(x, dict) else {}, y if isinstance(y, dict) else {}
    return {k for k in set(x) | set(y) if x.get(k) != y.get(k)}


def _lockstep(ga, gb):
    """Pairs of step groups from two `groupby(records, step)`: (step, records of A, records of B), a side with no
    group for that step giving ()."""
    na, nb = next(ga, None), next(gb, None)
    while na is not None or nb is not None:
        if nb is None or (na is not None and _order(na[0]) < _order(nb[0])):
            yield na[0], na[1], ()
            na = next(ga, None)
        elif na is None or _order(nb[0]) < _order(na[0]):
            yield nb[0], (), nb[1]
            nb = next(gb, None)
        else:
            yield na[0], na[1], nb[1]
            na, nb = next(ga, None), next(gb, None)


def diff_job(a: Job | list[Process], b: Job | list[Process]) -> dict:
    """Compare two runs (or two process lists, such as two ranks of one job); see the module docstring."""
    pa = a.processes if isinstance(a, Job) else a
    pb = b.processes if isinstance(b, Job) else b
    return Differ(pa, pb).run()


def format_diff(d: dict, top: int = 10) -> str:
    """What `trace diff` prints: the verdict, the first tensor and call difference, then differences per step."""
    if d["equal"]:
        return f"equal: {d['records']['a']} and {d['records']['b']} records, no difference in calls or tracked tensors"
    out = ["runs differ"]
    for side in ("a", "b"):
        for label in d["unmatched_processes"][side]:
            out.append(f"only in {side.upper()}: {label}")
    t = d["first_tensor_difference"]
    if t:
        out.append(f"first tensor difference: step {t['step']} ({t['process_a']} vs {t['process_b']})")
        for f in t["tensors"][:top]:
            what = ", ".join(f["attributes"]) or "records"
            out.append(f"  {f['name']}: {what} differ ({f['records_a']} vs {f['records_b']} records in the step)")
        if len(t["tensors"]) > top:
            out.append(f"  ... and {len(t['tensors']) - top} more")
    c = d["first_call_difference"]
    if c:
        out.append(f"first call difference: step {c['step']}, call {c['call']} of the step on thread {c['thread']} "
                   f"({c['process_a']} vs {c['process_b']}), differs in {', '.join(c['fields'])}")
        for side in ("a", "b"):
            r = c[side]
            if r is None:
                out.append(f"  {side.upper()}: (no more records in this step)")
                continue
            kind = r["type"].replace("function_call ", "") if r["type"] else ""
            out.append(f"  {side.upper()}: {r['function']} {kind} at {r['site']}")
            if r["source"]:
                out.append(f"       {r['source']}")
            for name in c["fields"]:
                if name in r and name not in ("type", "function", "site", "source"):
                    out.append(f"       {name}: {r[name]}")
    steps = d["steps"]
    if steps:
        out.append(f"differences per step ({d['differing_steps']} steps differ):")
        for s in steps[:top]:
            line = (f"  step {s['step']}: {s['differing_records']} records differ, calls {s['calls_a']} vs "
                    f"{s['calls_b']}, {len(s['tensors'])} tensors differ")
            extra = [f"+A {str(x['function']).rsplit('.', 1)[-1]} ({x['site']}) x{x['count']}" for x in s["only_a"][:3]]
            extra += [f"+B {str(x['function']).rsplit('.', 1)[-1]} ({x['site']}) x{x['count']}" for x in s["only_b"][:3]]
            out.append(line + ("; " + "; ".join(extra) if extra else ""))
        if d["differing_steps"] > top:
            listed = f"--json lists the first {len(steps)}" if d["differing_steps"] > len(steps) else "--json lists them all"
            out.append(f"  ... {d['differing_steps'] - top} more steps ({listed})")
    return "\n".join(out)
