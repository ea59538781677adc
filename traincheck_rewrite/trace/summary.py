"""summarize(): what a run's trace holds, as a dict (`trace summary --json`) or a table."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from .reader import ReadStats, read_records


def summarize(run_dir: str | Path) -> dict:
    stats = ReadStats()
    functions: Counter = Counter()
    stages: Counter = Counter()
    variables: set = set()
    processes: set = set()
    threads: set = set()
    open_calls: set = set()
    state_changes = exceptions = max_step = 0
    for r in read_records(run_dir, stats=stats):
        kind = r.get("type", "")
        pid = r.get("process_id")
        processes.add(pid)
        threads.add((pid, r.get("thread_id")))
        meta = r.get("meta_vars") or {}
        step = meta.get("step")
        if isinstance(step, int) and step > max_step:
            max_step = step
        stages[meta.get("stage", "init")] += 1
        if kind == "function_call (pre)":
            open_calls.add(r.get("func_call_id"))
        elif kind.startswith("function_call (post)"):
            open_calls.discard(r.get("func_call_id"))
            functions[r.get("function")] += 1
            if kind.endswith("(exception)"):
                exceptions += 1
        elif kind == "state_change":
            state_changes += 1
            variables.add(r.get("var_name"))
    exit_code = None
    run_json = Path(run_dir) / "run.json"
    if run_json.is_file():
        try:
            exit_code = json.loads(run_json.read_text(encoding="utf-8")).get("exit_code")
        except ValueError:
            pass
    return {
        "records": stats.records,
        "files": stats.files,
        "api_calls": sum(functions.values()),
        "functions": dict(functions.most_common()),
        "state_changes": state_changes,
        "variables": len(variables),
        "processes": len(processes),
        "threads": len(threads),
        "max_step": max_step,
        "stages": dict(stages),
        "exceptions": exceptions,
        "open_calls": len(open_calls),
        "truncated_files": len(stats.truncated_files),
        "bad_lines": stats.bad_lines,
        "exit_code": exit_code,
    }


def format_summary(d: dict, top: int = 20) -> str:
    rows = [
        ("records", d["records"]),
        ("trace files", d["files"]),
        ("API calls (completed)", d["api_calls"]),
        ("  raised", d["exceptions"]),
        ("  left open", d["open_calls"]),
        ("distinct functions", len(d["functions"])),
        ("state changes", d["state_changes"]),
        ("variables", d["variables"]),
        ("processes / threads", f"{d['processes']} / {d['threads']}"),
        ("max step", d["max_step"]),
        ("truncated files", d["truncated_files"]),
        ("program exit code", d["exit_code"]),
    ]
    out = [f"{name:<24} {value:>12}" for name, value in rows]
    if d["functions"]:
        out.append("")
        out.append(f"{'calls':>8}  function (top {min(top, len(d['functions']))})")
        out += [f"{count:>8}  {name}" for name, count in list(d["functions"].items())[:top]]
    if d["stages"]:
        out.append("")
        out.append(f"{'records':>8}  stage")
        out += [f"{count:>8}  {stage}" for stage, count in sorted(d["stages"].items(), key=lambda kv: -kv[1])]
    return "\n".join(out)
