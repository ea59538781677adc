"""`tc-rewrite --check`: TrainCheck's online checker follows the run folder while the program runs, and each violation
is told as it is found, with the program's own source line of every call involved.

The engine is TrainCheck's (`traincheck-onlinecheck`, in whatever interpreter has `traincheck` installed: its own
virtualenv, usually), run through onlinecheck_driver.py so that it ends once it has checked the whole trace. It reads
the plain trace files the live export writes into the run folder (trace/live.py) and appends each violation to
`check/failed.log` as it finds it; a thread here reads that file as it grows, prints each violation once to stderr,
and keeps it, in our words, in `check/violations.jsonl` (docs/trace-format.md) for the timeline, `trace query` and
`trace summary`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

CHECK_DIR = "check"
VIOLATIONS = "violations.jsonl"
DRIVER = Path(__file__).resolve().parent / "onlinecheck_driver.py"
READ_EVERY_S = 0.1
HOW_TO_GET = ("install TrainCheck (`pip install traincheck==0.2.0`, or `bash scripts/traincheck_venv.sh` for a virtualenv "
              "of its own) and name it with --checker PATH (its virtualenv, or its traincheck-onlinecheck)")
_PROBE = (
    "import importlib.util, importlib.metadata, os, sys\n"
    "spec = importlib.util.find_spec('traincheck')\n"
    "found = spec is not None and any(os.path.exists(os.path.join(d, 'checker_online.py')) for d in spec.submodule_search_locations or ())\n"
    "print(importlib.metadata.version('traincheck') if found else '')\n"
)  # fmt: skip
# What a stopped program's exit code and a found violation make of tc-rewrite's (docs/traincheck.md#3-check-while-it-trains).
EXIT_VIOLATED = 3


class CheckError(Exception):
    """A one-line reason `--check` cannot run."""


@dataclass(frozen=True)
class Engine:
    python: Path
    version: str


def find_engine(checker: Path | None) -> Engine:
    """The interpreter that runs TrainCheck's online checker: `checker` (a virtualenv, an interpreter, or a
    `traincheck-onlinecheck` script), else the `traincheck-onlinecheck` on PATH. Probed without importing traincheck
    (which imports torch)."""
    if checker is None:
        found = shutil.which("traincheck-onlinecheck")
        if found is None:
            raise CheckError(f"--check needs TrainCheck's online checker, and traincheck-onlinecheck is not on PATH: {HOW_TO_GET}")
        python = Path(found).parent / "python"
        named = "traincheck-onlinecheck on PATH"
    else:
        checker = Path(checker)
        if checker.is_dir():
            python = checker / "bin" / "python"
        elif checker.name.startswith("python"):
            python = checker
        else:
            python = checker.parent / "python"
        named = f"checker {checker}"
    if not os.access(python, os.X_OK):
        raise CheckError(f"{named}: no Python interpreter at {python}: {HOW_TO_GET}")
    probe = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=60)
    version = probe.stdout.strip()
    if probe.returncode != 0 or not version:
        raise CheckError(f"{named}: {python} has no TrainCheck online checker (traincheck.checker_online): {HOW_TO_GET}")
    return Engine(python, version)


@dataclass
class Verdict:
    """What the check found; `run.json`'s `check`."""

    invariants: int = 0
    violations: int = 0
    violated: set = field(default_factory=set)  # invariant texts
    first_step: int | None = None
    first: dict | None = None
    stopped_at_step: int | None = None
    complete: bool = False
    engine_exit_code: int | None = None
    drain_s: float | None = None  # from the program's end to the checker's
    checked_records: int | None = None  # records the checker took (marks included)
    checker_busy_s: float | None = None  # from its first record to its end
    program_steps: int | None = None  # the highest step of the trace

    def to_json(self, engine: Engine) -> dict:
        return {
            "engine": f"traincheck {engine.version} ({engine.python})", "invariants": self.invariants,
            "violations": self.violations, "violated_invariants": len(self.violated), "first_violation_step": self.first_step,
            "first_violation": self.first, "stopped_at_step": self.stopped_at_step, "complete": self.complete,
            "engine_exit_code": self.engine_exit_code, "drain_s": self.drain_s, "checked_records": self.checked_records,
            "checker_busy_s": self.checker_busy_s, "program_steps": self.program_steps, "report": f"{CHECK_DIR}/report.html",
        }  # fmt: skip


class OnlineCheck:
    """The checker beside one run: `start` before the program, `finish` after the live export wrote its end marks.
    `on_violation(violation)` is called (on the reader thread) for the first violation, e.g. to stop the program."""

    def __init__(self, run_dir: Path, invariant_files: list[Path], engine: Engine, live, on_violation=None) -> None:
        self.run_dir, self.engine, self.live, self.on_violation = run_dir, engine, live, on_violation
        self.folder = run_dir / CHECK_DIR
        self.invariant_files = invariant_files
        self.verdict = Verdict()
        self.sites: dict | None = None
        self.process: subprocess.Popen | None = None
        self.stop = threading.Event()
        self.reader: threading.Thread | None = None
        self.offset = 0
        self.pending = ""
        self.seen: set = set()  # invariants already told in full
        self.out = None

    def start(self) -> None:
        self.folder.mkdir()
        lines = []
        for path in self.invariant_files:
            lines += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        (self.folder / "invariants.json").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        self.verdict.invariants = len(lines)
        (self.folder / VIOLATIONS).touch()
        self.out = open(self.folder / "checker_output.txt", "wb")
        # Paths relative to the check folder: the checker copies its invariants with a shell command.
        command = [str(self.engine.python), str(DRIVER), "-f", "..", "-i", "invariants.json", "-o", ".", "--exit-on-idle",
                   "-v", "--report-interval-seconds", "2"]  # fmt: skip
        self.process = subprocess.Popen(command, cwd=self.folder, stdin=subprocess.DEVNULL, stdout=self.out,
                                        stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        self.reader = threading.Thread(target=self._read, name="tc-rewrite-check", daemon=True)
        self.reader.start()

    def finish(self, trace_ended: bool, timeout_s: float = 600) -> Verdict:
        """Wait for the checker to check the rest of the trace (`trace_ended`: every plain file has its end mark),
        else end it now, its report written; then the last violations."""
        began = time.monotonic()
        if not trace_ended:
            self._interrupt()
        try:
            self.verdict.engine_exit_code = self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            _say(f"check: the checker has not finished {timeout_s:.0f} s after the program; its report is of what it checked")
            self._interrupt()
            self.verdict.engine_exit_code = self.process.wait()
        self.verdict.drain_s = round(time.monotonic() - began, 3)
        self.verdict.complete = trace_ended and self.verdict.engine_exit_code == 0
        self.stop.set()
        self.reader.join()
        self._read_new()
        self.out.close()
        self.verdict.checked_records, self.verdict.checker_busy_s = _checked(self.folder / "checker_output.txt")
        self.verdict.program_steps = max(self.live.last_step.values(), default=None)
        return self.verdict

    def _interrupt(self) -> None:
        """SIGINT: the checker writes its report and exits."""
        try:
            os.killpg(self.process.pid, signal.SIGINT)
            self.process.wait(30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            self.process.kill()

    def _read(self) -> None:
        while not self.stop.wait(READ_EVERY_S):
            self._read_new()

    def _read_new(self) -> None:
        """The violations appended to failed.log since the last read (indented JSON objects, one after another)."""
        path = self.folder / "failed.log"
        try:
            with open(path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        text = self.pending + data.decode("utf-8", errors="replace")
        decoder = json.JSONDecoder()
        at = 0
        while True:
            while at < len(text) and text[at].isspace():
                at += 1
            if at >= len(text):
                break
            try:
                result, at = decoder.raw_decode(text, at)
            except json.JSONDecodeError:
                break  # the rest is still being written
            self._found(result)
        self.pending = text[at:]

    def _found(self, result: dict) -> None:
        violation = self._describe(result)
        verdict = self.verdict
        first = verdict.violations == 0
        verdict.violations += 1
        verdict.violated.add(violation["invariant"])
        if violation["step"] is not None and (verdict.first_step is None or violation["step"] < verdict.first_step):
            verdict.first_step = violation["step"]
        if first:
            verdict.first = {k: violation[k] for k in ("step", "stage", "rank", "invariant", "relation")}
        with open(self.folder / VIOLATIONS, "ab") as f:
            f.write(json.dumps(violation).encode() + b"\n")
        for line in _told(violation, violation["invariant"] not in self.seen).splitlines():
            _say(line)
        self.seen.add(violation["invariant"])
        if first and self.on_violation is not None:
            self.on_violation(violation)

    def _describe(self, result: dict) -> dict:
        """One violation in our words: when and where (the last record of the ones the checker names), which
        invariant, and each call involved with the program's own line."""
        invariant = result.get("invariant") or {}
        records = [r for r in result.get("trace") or [] if isinstance(r, dict)]
        last = max(records, key=lambda r: _number(r.get("time")) or 0, default={})
        calls = []
        for record in records:
            call = _number(record.get("func_call_id"))
            if call is None:
                if isinstance(record.get("var_name"), str):
                    calls.append({"variable": record["var_name"]})
                continue
            calls.append({"function": record.get("function"), "step": _number(record.get("meta_vars.step")),
                          **self._program_site(_number(record.get("process_id")), call)})  # fmt: skip
        return {
            "time": _number(last.get("time")), "step": _number(last.get("meta_vars.step")),
            "stage": _text(last.get("meta_vars.stage")), "rank": _number(last.get("process_id")),
            "thread": _number(last.get("thread_id")), "relation": invariant.get("relation"),
            "invariant": invariant.get("text_description") or str(invariant.get("params")), "calls": calls,
            "found": time.monotonic_ns(),
        }  # fmt: skip

    def _program_site(self, process, call) -> dict:
        """The program's own line of a call: its site, or that of the nearest enclosing call made by the program (a
        call inside a library has a library site)."""
        if self.sites is None:
            try:
                self.sites = json.loads((self.run_dir / "sites.json").read_text())
            except (OSError, ValueError):
                self.sites = {}
        for _ in range(10_000):
            site, parent = self.live.calls.get((process, call), (None, None))
            entry = self.sites.get(str(site)) if type(site) is int else None
            if entry is not None:
                return {"file": entry.get("file"), "line": entry.get("line"), "source": entry.get("source")}
            if parent is None:
                break
            call = parent
        return {}


def _told(violation: dict, in_full: bool) -> str:
    where = ", ".join(str(p) for p in (violation["stage"], f"rank {violation['rank']}" if violation["rank"] is not None else None) if p)
    head = f"violation at step {violation['step']} ({where}): {violation['invariant']}"
    if not in_full:
        return head + " (again)"
    lines = [f"{head} [{violation['relation']}]"]
    steps = len({call.get("step") for call in violation["calls"] if "function" in call}) > 1  # calls of several steps
    for call in violation["calls"]:
        when = f", step {call.get('step')}" if steps else ""
        if "line" in call:
            lines.append(f"    {call['file']}:{call['line']}: {call['source']}    ({call['function']}{when})")
        elif "variable" in call:
            lines.append(f"    variable {call['variable']}")
        elif call.get("function"):
            lines.append(f"    {call['function']} (no line of the program{when})")
    return "\n".join(lines)


def _checked(path: Path) -> tuple[int | None, float | None]:
    """The driver's last line (onlinecheck_driver.DONE): records checked and seconds from the first to the end."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None, None
    for line in reversed(lines):
        if line.startswith("[tc-rewrite] checked "):
            words = line.split()
            try:
                return int(words[2]), float(words[5])
            except (IndexError, ValueError):
                break
    return None, None


def _number(value):
    """An int from the checker's record fields (pandas makes ids floats, and a missing value NaN)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float):
        return None if math.isnan(value) else int(value)
    return value if isinstance(value, int) else None


def _text(value):
    return value if isinstance(value, str) else None


def _say(message: str) -> None:
    print(f"tc-rewrite: {message}", file=sys.stderr, flush=True)
