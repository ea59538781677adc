"""scripts/bugbench.py's table gives, per entry and collector, what inference on the reference trace cost: the wall
time of `traincheck-infer` and the records it read, measured on a real zoo entry through TrainCheck's engine.
Skipped only when TrainCheck's virtualenv (scripts/traincheck_venv.sh) cannot be made."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import bugbench  # noqa: E402


@pytest.mark.slow
def test_row_reports_the_inference_time_and_the_records_of_the_reference_trace(tmp_path: Path):
    try:
        engine = bugbench.engine_bin()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    entry = bugbench.Entry.load(bugbench.ZOO / "zero_grad_missing")
    start = time.perf_counter()
    outcome = bugbench.bench(entry, bugbench.Ours(), engine, tmp_path, full=False)
    whole = time.perf_counter() - start
    assert outcome.error is None, outcome.error
    read = [p for p in (tmp_path / "ref_traces").iterdir() if p.name.startswith("trace_")]
    records = sum(len(p.read_text().splitlines()) for p in read)
    assert outcome.records == records > 0
    assert 0 < outcome.seconds["infer"] < whole - outcome.seconds["ref"] - outcome.seconds["bug"] - outcome.seconds["ok"]
    line = bugbench.row(entry, outcome, {"healthy": 1.0, "buggy": 1.0})
    assert f"| {outcome.invariants} | {outcome.seconds['infer']:.0f} s ({records:,} records) |" in line
    assert line.count("|") == bugbench.HEADER.splitlines()[0].count("|")


def _call(function: str, time_ns: int, step: int, stage: str) -> str:
    record = {"type": "function_call (pre)", "function": function, "time": time_ns, "process_id": 0, "thread_id": 0,
              "meta_vars": {"step": step, "stage": stage}, "args": {}, "kwargs": {}}  # fmt: skip
    return json.dumps(record)


@pytest.mark.parametrize("precondition, seen_at", [
    ({"func_lead": {"inverted": False, "preconditions": [{"clauses": [
        {"type": "constant", "prop_name": "meta_vars.stage", "additional_path": "None", "prop_dtype": "str", "values": ["evaluation"]}]}]}}, 10),
    ({"func_lead": {"inverted": True, "preconditions": [{"clauses": [
        {"type": "constant", "prop_name": "meta_vars.stage", "additional_path": "None", "prop_dtype": "str", "values": ["training"]}]}]}}, 10),
    ("Unconditional", 6),
])  # fmt: skip
def test_a_lead_violation_is_dated_at_the_next_call_its_precondition_lets_the_engine_compare(
    tmp_path: Path, precondition, seen_at: int
):
    """traincheck 0.2.0 reports the earlier of two calls of A with no B between, comparing only calls that meet the
    invariant's precondition: an evaluation call not followed by B is seen at the next evaluation, not at the
    training calls between."""
    traces = tmp_path / "traces"
    traces.mkdir()
    lines = [_call("m.A", 100 + step, step, stage) for step, stage in ((5, "evaluation"), (6, "training"), (7, "training"), (10, "evaluation"))]
    (traces / "trace_API_0.log").write_text("\n".join(lines) + "\n")
    reported = {"type": "function_call (pre)", "function": "m.A", "time": 105, "process_id": 0, "thread_id": 0,
                "meta_vars.step": 5, "meta_vars.stage": "evaluation"}  # fmt: skip
    invariant = {"relation": "FunctionLeadRelation", "text_description": "A() always precedes B()", "precondition": precondition}
    failed = tmp_path / "failed.log"
    failed.write_text(json.dumps({"invariant": invariant, "check_passed": False, "trace": [reported]}, indent=2) + "\n")
    violations = [{"relation_type": "FunctionLeadRelation", "first_step": 5}]
    bugbench._date_violations(violations, failed, traces)
    assert violations[0]["witness_step"] == seen_at
