"""scripts/bugbench.py's table gives, per entry and collector, what inference on the reference trace cost: the wall
time of `traincheck-infer` and the records it read, measured on a real zoo entry through TrainCheck's engine.
Skipped only when TrainCheck's virtualenv (scripts/traincheck_venv.sh) cannot be made."""

from __future__ import annotations

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
