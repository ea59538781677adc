"""The verdict of `tc-rewrite --check` as the trace tools show it: the violations a run folder's
`check/violations.jsonl` holds, each placed on its process and thread of the job, and run.json's `check` object.

A violation names its process and thread as the plain traces the checker read name them (export.py): the process by
its rank, or without one by its order of appearance after the highest rank; the thread by its order of appearance in
its process. `place` turns them back into the job's processes and threads.
"""

from __future__ import annotations

import json

from .job import Job, JobError, Process, RunFolder

CHECK_DIR = "check"
VIOLATIONS = "violations.jsonl"


def read_violations(run: RunFolder) -> list[dict]:
    """The violations of `run` in the order found; none when the run was not checked. A last line without its
    newline (tc-rewrite killed while writing it) is left out."""
    path = run.root / CHECK_DIR / VIOLATIONS
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise JobError(f"{path}: cannot be read: {exc}") from None
    lines = text.split("\n")
    lines.pop()  # "" after the last newline, or a torn last line
    violations = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            violation = json.loads(line)
        except ValueError:
            violation = None
        if not isinstance(violation, dict):
            raise JobError(f"{path}:{n}: not a JSON object")
        violations.append(violation)
    return violations


def _exported_ids(processes: list[Process]) -> dict[int, Process]:
    """The process id the plain traces give each of one run folder's processes (export.py's _Identities): the rank,
    else the order of the first record after the highest rank. A DataLoader worker shares its trainer's rank: the
    trainer holds the id."""
    ranked = [p for p in processes if p.rank is not None]
    unranked = sorted((p for p in processes if p.rank is None),
                      key=lambda p: (p.first_time is None, p.first_time or 0, p.pid))
    next_id = max((p.rank for p in ranked), default=-1) + 1
    ids: dict[int, Process] = {}
    for p in sorted(ranked, key=lambda p: p.worker_id is None):  # trainers last: they win a shared rank
        ids[p.rank] = p
    for n, p in enumerate(unranked):
        ids[next_id + n] = p
    return ids


def place(job: Job, processes: list[Process] | None = None):
    """(run, violation, process, thread index in `process.threads()`) of each violation of the job, run folder by
    run folder. With `processes` (a selection of the job's), only theirs; without, a violation whose process is not
    in the trace comes with process None. The thread index is None when the thread is unknown."""
    chosen = None if processes is None else {id(p) for p in processes}
    for run in job.runs:
        violations = read_violations(run)
        if not violations:
            continue
        ids = _exported_ids([p for p in job.processes if p.run is run])
        for violation in violations:
            rank, thread = violation.get("rank"), violation.get("thread")
            process = ids.get(rank) if type(rank) is int else None
            if chosen is not None and (process is None or id(process) not in chosen):
                continue
            index = None
            if process is not None and type(thread) is int and 0 <= thread < len(process.threads()):
                index = thread
            yield run, violation, process, index


def format_verdict(check: dict) -> str:
    """One line: `check: 171 invariants, 6 violated (30 violations), first at step 8 (training, rank 0): <text>`."""
    head = f"check: {check.get('invariants')} invariants"
    violated = check.get("violated_invariants") or 0
    if not check.get("violations"):
        line = f"{head}, none violated"
    else:
        line = f"{head}, {violated} violated ({check.get('violations')} violations)"
        first = check.get("first_violation") if isinstance(check.get("first_violation"), dict) else {}
        rank = f"rank {first['rank']}" if first.get("rank") is not None else None
        where = ", ".join(str(part) for part in (first.get("stage"), rank) if part)
        at = f" at step {first['step']}" if first.get("step") is not None else ""
        line += f", first{at}" + (f" ({where})" if where else "") + f": {first.get('invariant')}"
    if check.get("stopped_at_step") is not None:
        line += f"; stopped at step {check['stopped_at_step']}"
    if not check.get("complete"):
        line += "; incomplete (the checker did not see the whole trace)"
    return line
