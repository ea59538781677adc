"""The benchmark works (its numbers are reported, not asserted: speed goals live in scripts/bench.py's report)."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import ROOT


def test_quick_benchmark_runs_and_reports_every_measure():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--quick", "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    rows = {r["setting"]: r for r in report["workloads"]}
    assert list(rows) == ["plain", "default", "depth", "selective"] and {r["workload"] for r in rows.values()} == {"mlp"}
    plain = rows["plain"]
    for setting in ("default", "depth", "selective"):
        row = rows[setting]
        assert row["wall_s"] > 0 and row["peak_mib"] > 0 and row["records"] > 0 and row["trace_bytes"] > 0
        assert row["ratio"] == row["wall_s"] / plain["wall_s"]
        assert row["bytes_per_record"] == row["trace_bytes"] / row["records"]
    assert rows["depth"]["cold_s"] > 0 and rows["depth"]["records"] > rows["default"]["records"]  # inner calls too
    assert rows["selective"]["records"] < rows["default"]["records"]  # fewer APIs, sampled steps
    fixed = rows["selective"]["fixed_s"]  # a one-step run's extra time
    assert isinstance(fixed, float) and -rows["selective"]["wall_s"] < fixed < rows["selective"]["wall_s"]
    what = [m["what"] for m in report["micro"]]
    assert any("not logged" in w for w in what) and sum("tracking" in w for w in what) == 3
    assert any("in a training loop" in w for w in what) and any("before the loop is known" in w for w in what)
    assert sum("what it adds" in w for w in what) == 2
    assert any("rewrite speed" in w for w in what) and any("only-instr" in w for w in what)
    assert all(m["value"] > 0 for m in report["micro"])
