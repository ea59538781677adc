"""Detection benchmark on the bug zoo (fixtures/bugs): do the traces let TrainCheck's engine catch each bug?

    .venv/bin/python scripts/bugbench.py [ENTRY ...] [--traincheck VENV [--no-ours]] [--out FILE] [--keep DIR]

For every zoo entry and every collector (`tc-rewrite`; with `--traincheck VENV` also TrainCheck's
`traincheck-collect` from that virtualenv), the protocol a user follows:

1. a healthy reference run (seed 0), collected with default settings, `traincheck-infer` on it;
2. the buggy run (TC_BUG=1, seed 0), collected with `--invariants` (default sampling), `traincheck-check` on it;
   `tc-rewrite` collects it with `--check` too: TrainCheck's online checker checks it while it runs, and the table
   gives the step at which that check first reports the bug beside the offline check's;
3. a healthy run with another seed (TC_SEED=1), collected and checked the same way: any violation is a false alarm;
4. (`tc-rewrite` only, as evidence for misses) the buggy run collected in full, every API and every step, checked
   against the same invariants: tells a miss of selective collection from a miss of the trace itself.

Each program is also run plainly (healthy and buggy) to give the collection overhead of each run; the table also gives
the wall time of `traincheck-infer` on the reference trace and that trace's size in records (the lines of the files
the engine reads). The engine is the
one of scripts/traincheck_venv.sh (traincheck==0.2.0). Prints a Markdown table (and writes it to `--out`).
A violation on the buggy run counts as a detection only at or after the step where the bug begins (the
`BUG_STEP` constant of the program); violations before it are false alarms too. A lead violation is dated by the
call at which it is seen, not the earlier call the engine reports, and a consistency violation by the later of its
two records (see `_date_violations`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "fixtures" / "bugs"
TIMEOUT = 1200


@dataclass
class Entry:
    name: str
    folder: Path
    bug_step: int
    shscript: str | None
    models: list[str]

    @classmethod
    def load(cls, folder: Path) -> "Entry":
        config = yaml.safe_load((folder / "config.yaml").read_text())
        found = re.search(r"^BUG_STEP = (\d+)$", (folder / config["pyscript"]).read_text(), re.M)
        if not found:
            raise SystemExit(f"bugbench: {folder / config['pyscript']}: no 'BUG_STEP = <int>' line")
        return cls(folder.name, folder, int(found.group(1)), config.get("shscript"), list(config.get("models_to_track", [])))


@dataclass
class Outcome:
    """What one collector's traces let the engine see on one entry."""

    collector: str
    invariants: int = 0
    records: int = 0  # trace records of the reference run the engine reads
    bug_violations: list[dict] = field(default_factory=list)
    healthy_violations: list[dict] = field(default_factory=list)
    full_violations: list[dict] | None = None  # buggy run collected in full (tc-rewrite only)
    live_bug: list[dict] | None = None  # what `--check` reported while the buggy run ran (tc-rewrite only)
    live_healthy: list[dict] | None = None  # ... and while the healthy rerun ran
    seconds: dict[str, float] = field(default_factory=dict)  # collection (ref, bug, ok, full) and inference (infer)
    error: str | None = None

    def detections(self, bug_step: int) -> list[dict]:
        """Violations of the buggy run from the bug's first step on, of invariants the healthy rerun keeps."""
        return [v for v in self.bug_violations if _step(v) >= bug_step and _key(v) not in self._healthy_keys()]

    def early(self, bug_step: int) -> list[dict]:
        """Violations of the buggy run that are no detection: before the bug, or also on the healthy rerun."""
        return [v for v in self.bug_violations if _step(v) < bug_step or _key(v) in self._healthy_keys()]

    def _healthy_keys(self) -> set[tuple[str, str]]:
        return {_key(v) for v in self.healthy_violations}

    def first_step(self, bug_step: int, violations: list[dict] | None = None) -> int | None:
        found = [
            v
            for v in (self.bug_violations if violations is None else violations)
            if _step(v) >= bug_step and _key(v) not in self._healthy_keys()
        ]
        return min((_step(v) for v in found), default=None)

    def live_detections(self, bug_step: int) -> list[dict]:
        """`--check`'s violations of the buggy run from the bug's first step on (a lead violation names the call
        before the one that shows it: from the step before), of invariants its healthy rerun keeps."""
        healthy = {_live_key(v) for v in self.live_healthy or []}
        return [v for v in self.live_bug or [] if (v["step"] or 0) >= bug_step - 1 and _live_key(v) not in healthy]

    def live_early(self, bug_step: int) -> list[dict]:
        healthy = {_live_key(v) for v in self.live_healthy or []}
        return [v for v in self.live_bug or [] if (v["step"] or 0) < bug_step - 1 or _live_key(v) in healthy]


def _live_key(violation: dict) -> tuple[str, str]:
    return violation.get("relation") or "", violation.get("invariant") or ""


def _key(violation: dict) -> tuple[str, str]:
    return violation.get("relation_type", ""), violation.get("display_name", "")


def _step(violation: dict) -> int:
    step = violation.get("witness_step", violation.get("first_step"))
    return -1 if step is None else int(step)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TC_REWRITE_", "TC_BUG", "TC_SEED"))}
    if "TC_REWRITE_CACHE_DIR" in os.environ:
        env["TC_REWRITE_CACHE_DIR"] = os.environ["TC_REWRITE_CACHE_DIR"]
    env.update(extra)
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=TIMEOUT)
    return proc, time.perf_counter() - start


def _tail(proc: subprocess.CompletedProcess) -> str:
    lines = (proc.stderr or proc.stdout or "").strip().splitlines()
    return lines[-1][:200] if lines else f"exit {proc.returncode}"


def engine_bin() -> Path:
    """TrainCheck's engine, from the virtualenv of scripts/traincheck_venv.sh (made on first use)."""
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "traincheck_venv.sh")], capture_output=True, text=True, timeout=TIMEOUT)
    if proc.returncode != 0:
        raise RuntimeError(f"cannot set up TrainCheck's engine: {_tail(proc)}")
    return Path(proc.stdout.strip().splitlines()[-1]) / "bin"


def our_run_dir(output_dir: Path) -> Path:
    """The run folder `tc-rewrite --output-dir OUTPUT_DIR` made: OUTPUT_DIR itself (TrainCheck's meaning) or, as
    tc-rewrite did before it adopted that meaning, the one traincheck_run_* folder inside it."""
    if (output_dir / "traces").is_dir():
        return output_dir
    made = sorted(output_dir.glob("traincheck_run_*"))
    if len(made) != 1:
        raise RuntimeError(f"no run folder in {output_dir}")
    return made[0]


class Ours:
    name = "tc-rewrite"

    def __init__(self, checker: Path | None = None):
        self.checker = checker  # TrainCheck's virtualenv: runs with invariants are also checked as they run (--check)

    def collect(self, entry: Entry, work: Path, label: str, env: dict[str, str], invariants: Path | None) -> tuple[Path, float]:
        """Collects one run; returns the folder of plain traces the engine reads and the wall time of collection."""
        out = work / f"{label}_run"
        cmd = [sys.executable, "-m", "traincheck_rewrite", str(entry.folder / "config.yaml"), "--output-dir", str(out)]
        if invariants:
            cmd += ["--invariants", str(invariants)]
            if self.checker is not None and label != "full":
                cmd += ["--check", "--checker", str(self.checker)]
        proc, seconds = _run(cmd, ROOT, env)
        if proc.returncode not in (0, 3):  # 3: --check found violations
            raise RuntimeError(f"{label}: tc-rewrite failed: {_tail(proc)}")
        export = work / f"{label}_traces"
        proc, _ = _run([sys.executable, "-m", "traincheck_rewrite", "trace", "export", str(our_run_dir(out)), "--to", str(export)], ROOT, env)
        if proc.returncode != 0:
            raise RuntimeError(f"{label}: export failed: {_tail(proc)}")
        return export, seconds


class Theirs:
    name = "traincheck-collect"

    def __init__(self, venv: Path):
        self.bin = venv / "bin"

    def collect(self, entry: Entry, work: Path, label: str, env: dict[str, str], invariants: Path | None) -> tuple[Path, float]:
        src = work / f"{label}_src"
        shutil.copytree(entry.folder, src)
        out = work / f"{label}_run"
        cmd = [str(self.bin / "traincheck-collect"), "--pyscript", "train.py", "--output-dir", str(out)]
        if entry.shscript:
            cmd += ["--shscript", entry.shscript]
        if entry.models:
            cmd += ["--models-to-track", *entry.models]
        if invariants:
            cmd += ["--invariants", str(invariants)]
        env = {**env, "PATH": f"{self.bin}{os.pathsep}{env.get('PATH', '')}"}  # its torchrun, its python
        proc, seconds = _run(cmd, src, env)
        if proc.returncode != 0:
            output = out / "program_output.txt"
            why = "SIGSEGV" if output.exists() and "SIGSEGV" in output.read_text(errors="replace") else _tail(proc)
            raise RuntimeError(f"{label}: traincheck-collect failed: {why}")
        return out, seconds


def plain_seconds(entry: Entry, env: dict[str, str], python_bin: Path) -> float:
    cmd = ["bash", entry.shscript] if entry.shscript else [str(python_bin), "train.py"]
    env = {**env, "PATH": f"{python_bin.parent}{os.pathsep}{env.get('PATH', '')}"}
    proc, seconds = _run(cmd, entry.folder, env)
    if proc.returncode != 0:
        raise RuntimeError(f"plain run failed: {_tail(proc)}")
    return seconds


def infer(engine: Path, traces: list[Path], out: Path) -> tuple[int, float]:
    """`traincheck-infer` on the trace folders together: the number of invariants and the wall time it took."""
    proc, seconds = _run([str(engine / "traincheck-infer"), "-f", *map(str, traces), "-o", str(out)], out.parent, _env())
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"traincheck-infer failed: {_tail(proc)}")
    return sum(1 for line in out.read_text().splitlines() if line.strip()), seconds


def trace_records(traces: Path) -> int:
    """The records of a trace folder that the engine reads (its files named trace_* or proxy_log.json)."""
    read = [p for p in traces.iterdir() if p.name.startswith(("trace_", "proxy_log.json"))]
    return sum(sum(1 for line in p.open(errors="replace") if line.strip()) for p in read)


def check(engine: Path, traces: Path, invariants: Path, out: Path) -> list[dict]:
    cmd = [str(engine / "traincheck-check"), "-f", str(traces), "-i", str(invariants), "-o", str(out), "--no-html-report"]
    proc, _ = _run(cmd, out.parent, _env())
    summaries = list(out.glob("*/violations_summary.json"))
    if proc.returncode != 0 or len(summaries) != 1:
        raise RuntimeError(f"traincheck-check failed: {_tail(proc)}")
    violations = json.loads(summaries[0].read_text())["violations"]
    _date_violations(violations, summaries[0].parent / "failed.log", traces)
    return violations


def _failed_results(path: Path) -> list[dict]:
    """The results of failed.log (pretty-printed JSON objects one after the other), in the summary's order."""
    text, decoder, results, at = path.read_text(), json.JSONDecoder(), [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            return results
        result, at = decoder.raw_decode(text, at)
        results.append(result)


def _date_violations(violations: list[dict], failed_log: Path, traces: Path) -> None:
    """A lead violation ("A always precedes B") is found at a call of A with no B since A's previous call, but
    traincheck 0.2.0 reports that previous call (`invariant/lead_relation.py`, the `trace=[pre_event_A]` of its
    checker): the bug's first step shows up as the step before it. Each lead violation gets `witness_step`, the step
    of the next call of the reported function on the same thread that meets the invariant's precondition (the
    engine compares only such calls: an invariant of the evaluation stage is seen broken at the next evaluation's
    call, not at the training call between): the call at which the violation is seen. A
    consistency violation pairs two values, each reported by its last record: it is seen at the later one (a value
    one rank held since set-up against the other rank's value of step 6 is seen at step 6, not at step 0)."""
    results = _failed_results(failed_log) if failed_log.exists() else []
    if len(results) != len(violations):
        return
    for violation, result in zip(violations, results):
        if violation.get("relation_type") == "ConsistencyRelation":
            steps = [r.get("meta_vars.step") for r in result.get("trace") or [] if isinstance(r, dict)]
            if steps and all(isinstance(step, int) for step in steps):
                violation["witness_step"] = max(steps)
            continue
        reported = (result.get("trace") or [None])[0]
        if violation.get("relation_type") != "FunctionLeadRelation" or not isinstance(reported, dict):
            continue
        step = _next_call_step(traces, reported, _single_call_precondition(result))
        if step is not None:
            violation["witness_step"] = step


def _next_call_step(traces: Path, reported: dict, precondition=None) -> int | None:
    """The step of the first call of `reported`'s function after it, on its process and thread, that meets
    `precondition` (a function of the flattened record, or None for any call)."""
    function, after = reported.get("function"), reported.get("time")
    where = (reported.get("process_id"), reported.get("thread_id"))
    needle, best = json.dumps(function), None
    for path in traces.iterdir():
        if not path.name.startswith("trace_"):
            continue
        with path.open() as lines:
            for line in lines:
                if needle not in line:
                    continue
                record = json.loads(line)
                if (record.get("type") == "function_call (pre)" and record.get("function") == function
                        and (record.get("process_id"), record.get("thread_id")) == where and record["time"] > after
                        and (best is None or record["time"] < best[0])
                        and (precondition is None or precondition(_flattened(record)))):  # fmt: skip
                    best = (record["time"], record.get("meta_vars", {}).get("step"))
    return None if best is None else best[1]


def _flattened(record: dict, prefix: str = "") -> dict:
    """Nested keys joined by dots (`meta_vars.stage`) but for a call's arguments and result, as traincheck 0.2.0
    reads a trace record (`trace/utils.py`, `read_jsonlines_flattened_with_md_none`)."""
    out = {}
    for key, value in record.items():
        if key in ("args", "kwargs", "return_values"):
            out[key] = value
        elif isinstance(value, dict) and value:
            out.update(_flattened(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _single_call_precondition(result: dict):
    """The lead invariant's precondition on one call, as traincheck 0.2.0's `Preconditions.verify([record])` decides
    it (a disjunction of conjunctions of clauses, possibly inverted; on one record a `constant` clause holds when the
    property is one of its values, the other kinds when the property is there); None (any call) for a form it does
    not know, so that dating falls back to the next call."""
    groups = (result.get("invariant") or {}).get("precondition")
    if groups == "Unconditional" or not isinstance(groups, dict) or len(groups) != 1:
        return None
    (group,) = groups.values()
    if group == "Unconditional":
        return None
    try:
        inverted = bool(group["inverted"])
        conjunctions = [c["clauses"] for c in group["preconditions"]]
        if any(c == "Unconditional" for c in conjunctions):
            return lambda record: not inverted
        clauses = [[(k["type"], k["prop_name"], k["additional_path"], k.get("values")) for k in c] for c in conjunctions]
    except (KeyError, TypeError):
        return None
    if any(kind not in ("constant", "consistent", "unequal", "exist") for c in clauses for kind, *_ in c):
        return None

    def holds(kind: str, name: str, path, values, record: dict) -> bool:
        if name not in record:
            return False
        value = record[name]
        for part in path if isinstance(path, list) else ():
            if not isinstance(value, dict) or part not in value:
                return False
            value = value[part]
        if isinstance(value, float) and value != value:  # NaN: missing in the engine's frame
            return False
        if kind == "exist":
            return True
        if isinstance(value, (dict, list)):  # not hashable: the engine says no
            return False
        return kind != "constant" or value in values  # null is a value to the engine (MD_NONE)

    return lambda record: any(all(holds(*clause, record) for clause in c) for c in clauses) != inverted


def bench(entry: Entry, collector, engine: Path, work: Path, full: bool = True) -> Outcome:
    """The whole protocol for one entry and one collector, in WORK (`full`: also step 4 for tc-rewrite)."""
    outcome = Outcome(collector.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        ref, outcome.seconds["ref"] = collector.collect(entry, work, "ref", _env(TC_SEED="0"), None)
        invariants = work / "invariants.json"
        outcome.records = trace_records(ref)
        outcome.invariants, outcome.seconds["infer"] = infer(engine, [ref], invariants)
        bug, outcome.seconds["bug"] = collector.collect(entry, work, "bug", _env(TC_BUG="1", TC_SEED="0"), invariants)
        outcome.bug_violations = check(engine, bug, invariants, work / "bug_check")
        ok, outcome.seconds["ok"] = collector.collect(entry, work, "ok", _env(TC_SEED="1"), invariants)
        outcome.healthy_violations = check(engine, ok, invariants, work / "ok_check")
        if getattr(collector, "checker", None) is not None:
            outcome.live_bug, outcome.live_healthy = live_violations(work / "bug_run"), live_violations(work / "ok_run")
        if full and isinstance(collector, Ours):
            full, outcome.seconds["full"] = collector.collect(entry, work, "full", _env(TC_BUG="1", TC_SEED="0"), None)
            outcome.full_violations = check(engine, full, invariants, work / "full_check")
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        outcome.error = str(exc)
    return outcome


def live_violations(output_dir: Path) -> list[dict]:
    """What `tc-rewrite --check` reported while the run ran (checking.py's check/violations.jsonl)."""
    path = our_run_dir(output_dir) / "check" / "violations.jsonl"
    if not path.exists():
        raise RuntimeError(f"{output_dir.name}: --check left no {path.name}")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def short(violation: dict) -> str:
    """One invariant in a few words: relation and display name, module paths trimmed."""
    text = re.sub(r"\b(?:torch\.(?:nn\.modules|optim|_C)\.)?(?:[a-z_]+\.)+(?=[A-Z_a-z]+\.[a-z_]+\b)", "", violation.get("display_name", ""))
    text = re.sub(r"\s+", " ", text).strip()
    return f"{violation.get('relation_type', '?').replace('Relation', '')}: {text[:110]}"


def _fired(violations: list[dict], limit: int = 3) -> str:
    texts = sorted({short(v) for v in violations})
    more = f" (+{len(texts) - limit} more)" if len(texts) > limit else ""
    return "<br>".join(t.replace("|", "/") for t in texts[:limit]) + more


def inference(outcome: Outcome) -> str:
    """The inference column: wall time of `traincheck-infer` on the reference trace, and that trace's records."""
    if "infer" not in outcome.seconds:  # a run from before the column, or inference did not finish
        return "-"
    return f"{outcome.seconds['infer']:.0f} s ({outcome.records:,} records)"


def row(entry: Entry, outcome: Outcome, plain: dict[str, float]) -> str:
    if outcome.error:
        columns = HEADER.splitlines()[0].count("|") - 1
        return f"| {entry.name} | {outcome.collector} | error: {outcome.error.replace('|', '/')} |" + " |" * (columns - 3)
    found = outcome.detections(entry.bug_step)
    first = outcome.first_step(entry.bug_step)
    early = outcome.early(entry.bug_step)
    healthy = outcome.healthy_violations
    alarms = f"{len(healthy)} (from step {min(_step(v) for v in healthy)})" if healthy else "0"
    if early:
        alarms += f"; buggy run: {len(early)} before the bug or also on the healthy run (from step {min(_step(v) for v in early)})"
    fired = _fired(found) or "-"
    if early:
        fired += f"<br>not counted: {_fired(early)}"
    if outcome.full_violations is None:
        full = "n/a"
    else:
        first_full = outcome.first_step(entry.bug_step, outcome.full_violations)
        full = f"{len(outcome.full_violations)} violated, from step {'-' if first_full is None else first_full}"
    if outcome.live_bug is None:
        live = "n/a"
    else:
        found_live, early_live = outcome.live_detections(entry.bug_step), outcome.live_early(entry.bug_step)
        live = f"step {min(v['step'] for v in found_live)}" if found_live else "**no**"
        live += f"; {len(outcome.live_healthy)} on the healthy run" + (f", {len(early_live)} not counted" if early_live else "")
    overhead = " / ".join(
        f"{outcome.seconds[k] / plain[p]:.1f}x" for k, p in (("ref", "healthy"), ("bug", "buggy"), ("ok", "healthy"))
    )
    return (
        f"| {entry.name} | {outcome.collector} | {'yes' if found else '**no**'} | {entry.bug_step} | "
        f"{'-' if first is None else first} | {live} | {outcome.invariants} | {inference(outcome)} | {fired} | {alarms} | {overhead} | {full} |"
    )


HEADER = (
    "| entry | collector | detected | bug begins | first violation | --check reports it | invariants | inference (trace) | "
    "invariants that fired | false alarms | overhead ref / bug / ok | buggy run collected in full |\n"
    "| --- | --- | --- | ---: | ---: | --- | ---: | ---: | --- | --- | --- | --- |"
)


def render(details: list[dict]) -> str:
    """The table of an earlier run, from its JSON details."""
    lines = [HEADER]
    for item in details:
        entry = Entry(item["entry"], ZOO / item["entry"], item["bug_step"], None, [])
        fields = {k: item[k] for k in Outcome.__dataclass_fields__ if k in item}
        lines.append(row(entry, Outcome(**fields), item["plain_seconds"]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("entries", nargs="*", help="zoo entries (folder names under fixtures/bugs) [all]")
    parser.add_argument("--traincheck", type=Path, metavar="VENV", help="also run TrainCheck's collector from VENV")
    parser.add_argument("--no-ours", action="store_true", help="with --traincheck: TrainCheck's collector alone")
    parser.add_argument("--out", type=Path, help="also write the table (and the details as JSON beside it)")
    parser.add_argument("--keep", type=Path, help="keep every run, trace and report under this folder")
    parser.add_argument("--render", type=Path, metavar="JSON", help="print the table of an earlier --out run again")
    args = parser.parse_args()
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return
    names = args.entries or sorted(p.name for p in ZOO.iterdir() if (p / "config.yaml").exists())
    entries = [Entry.load(ZOO / name) for name in names]
    engine = engine_bin()
    collectors = ([] if args.no_ours and args.traincheck else [Ours(engine.parent)]) + ([Theirs(args.traincheck.resolve())] if args.traincheck else [])
    work_root = Path(tempfile.mkdtemp(prefix="bugbench_")) if args.keep is None else args.keep.resolve()
    lines, details = [HEADER], []
    print(HEADER, flush=True)
    try:
        for entry in entries:
            plain = {
                "healthy": plain_seconds(entry, _env(TC_SEED="0"), Path(sys.executable)),
                "buggy": plain_seconds(entry, _env(TC_BUG="1", TC_SEED="0"), Path(sys.executable)),
            }
            for collector in collectors:
                outcome = bench(entry, collector, engine, work_root / entry.name / collector.name)
                lines.append(row(entry, outcome, plain))
                print(lines[-1], flush=True)
                details.append({"entry": entry.name, "bug_step": entry.bug_step, "plain_seconds": plain, **outcome.__dict__})
                if args.out:  # after every entry, so that an interrupted run keeps what it measured
                    args.out.write_text("\n".join(lines) + "\n")
                    args.out.with_suffix(".json").write_text(json.dumps(details, indent=1, default=str) + "\n")
    finally:
        if args.keep is None:
            shutil.rmtree(work_root, ignore_errors=True)


if __name__ == "__main__":
    main()
