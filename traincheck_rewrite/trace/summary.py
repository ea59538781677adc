"""summarize(): what a run's trace holds, as a dict (`trace summary --json`) or a table (`format_summary`)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .reader import ReadStats, read_records
from .verdict import format_verdict

PRE = "function_call (pre)"
POST = "function_call (post)"
EXCEPTION = "function_call (post) (exception)"
STATE = "state_change"


def _run_info(run_dir: Path) -> dict:
    """The run's run.json (beside the traces folder), or {}."""
    for candidate in (run_dir / "run.json", run_dir.parent / "run.json" if run_dir.name == "traces" else None):
        if candidate is not None and candidate.is_file():
            try:
                info = json.loads(candidate.read_text(encoding="utf-8"))
            except (ValueError, OSError):
                return {}
            return info if isinstance(info, dict) else {}
    return {}


def summarize(run_dir: str | Path | list) -> dict:
    """Counts over every record of a run folder (or its traces folder, or several run folders of one job: one per
    node); see docs/trace-format.md for the records.

    api_calls: completed calls (post + exception records); functions: {function: completed calls}, most first;
    open_calls: calls with a pre record and no post/exception; stages: {stage: records}, a record without
    `meta_vars.stage` counting as "init"; max_step: the largest int `meta_vars.step` (0 if none); ranks: the
    distinct int `meta_vars.rank`; exit_code: the program's (of several folders: the first non-zero one); check
    (only when the run was checked, `tc-rewrite --check`): run.json's `check` (of several folders: a list, one per
    folder, None for a folder not checked)."""
    several = isinstance(run_dir, (list, tuple))
    folders = [Path(p) for p in run_dir] if several else [Path(run_dir)]
    stats = ReadStats()
    ranks: set = set()
    functions: Counter = Counter()
    stages: Counter = Counter()
    variables: set = set()
    processes: set = set()
    threads: set = set()
    balance: dict = {}  # func_call_id -> pres - closes, only while unbalanced (the pair is usually adjacent in time)
    state_changes = exceptions = max_step = 0
    records = (r for folder in folders for r in read_records(folder, stats=stats))
    for r in records:
        kind = r.get("type")
        pid = r.get("process_id")
        processes.add(pid)
        threads.add((pid, r.get("thread_id")))
        meta = r.get("meta_vars")
        if not isinstance(meta, dict):
            meta = {}
        rank = meta.get("rank")
        if type(rank) is int:
            ranks.add(rank)
        step = meta.get("step")
        if type(step) is int and step > max_step:
            max_step = step
        stages[str(meta.get("stage") or "init")] += 1
        if kind == PRE or kind == POST or kind == EXCEPTION:
            call = r.get("func_call_id")
            n = balance.get(call, 0) + (1 if kind == PRE else -1)
            if n:
                balance[call] = n
            else:
                del balance[call]
            if kind != PRE:
                functions[str(r.get("function", "<unknown>"))] += 1
                exceptions += kind == EXCEPTION
        elif kind == STATE:
            state_changes += 1
            variables.add(r.get("var_name"))
    infos = [_run_info(f) for f in folders]
    summary = {
        "records": stats.records,
        "files": stats.files,
        "api_calls": sum(functions.values()),
        "functions": dict(sorted(functions.items(), key=lambda kv: (-kv[1], kv[0]))),
        "state_changes": state_changes,
        "variables": len(variables),
        "processes": len(processes),
        "threads": len(threads),
        "max_step": max_step,
        "stages": dict(sorted(stages.items(), key=lambda kv: (-kv[1], kv[0]))),
        "exceptions": exceptions,
        "open_calls": sum(n for n in balance.values() if n > 0),
        "truncated_files": len(stats.truncated_files),
        "bad_lines": stats.bad_lines,
        "ranks": sorted(ranks),
        "exit_code": _job_exit_code([info.get("exit_code") for info in infos]),
    }
    checks = [info.get("check") if isinstance(info.get("check"), dict) else None for info in infos]
    if any(checks):
        summary["check"] = checks if several else checks[0]
    return summary


def _job_exit_code(codes: list):
    failed = [c for c in codes if c not in (0, None)]
    return failed[0] if failed else (0 if 0 in codes else None)


def _ranks_text(ranks: list[int]) -> str:
    """0,1,2,3,7 -> "0-3,7"; "-" for none."""
    if not ranks:
        return "-"
    spans: list[list[int]] = []
    for rank in ranks:
        if spans and rank == spans[-1][1] + 1:
            spans[-1][1] = rank
        else:
            spans.append([rank, rank])
    text = ",".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
    return text if len(text) <= 12 else f"{len(ranks)} ranks"


def format_summary(d: dict, top: int = 20) -> str:
    """The verdict of the check (when the run was checked), then a fixed-width table: the totals, the `top`
    functions by completed calls, then records per stage."""
    exit_code = d.get("exit_code")
    rows = [
        ("records", d["records"]),
        ("trace files", d["files"]),
        ("  truncated", d["truncated_files"]),
        ("  bad lines", d.get("bad_lines", 0)),
        ("API calls (completed)", d["api_calls"]),
        ("  raised", d["exceptions"]),
        ("  left open", d["open_calls"]),
        ("distinct functions", len(d["functions"])),
        ("state changes", d["state_changes"]),
        ("variables", d["variables"]),
        ("processes", d["processes"]),
        ("threads", d["threads"]),
        ("ranks", _ranks_text(d.get("ranks") or [])),
        ("max step", d["max_step"]),
        ("program exit code", "-" if exit_code is None else exit_code),
    ]
    checks = d.get("check")
    out = [format_verdict(c) for c in (checks if isinstance(checks, list) else [checks]) if isinstance(c, dict)]
    out += [""] if out else []
    out += [f"{name:<24}{value:>12}" for name, value in rows]
    functions = sorted(d["functions"].items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    if functions:
        out += ["", f"{'calls':>12}  function (top {len(functions)} of {len(d['functions'])})"]
        out += [f"{count:>12}  {name}" for name, count in functions]
    if d["stages"]:
        out += ["", f"{'records':>12}  stage"]
        out += [f"{count:>12}  {stage}" for stage, count in sorted(d["stages"].items(), key=lambda kv: (-kv[1], kv[0]))]
    return "\n".join(out)
