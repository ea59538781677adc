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
    (mlp,) = report["workloads"]
    assert mlp["workload"] == "mlp" and mlp["plain_s"] > 0 and mlp["traced_s"] > 0 and mlp["records"] > 0
    assert mlp["ratio"] == mlp["traced_s"] / mlp["plain_s"]
    (depth,) = report["depth"]
    assert depth["workload"] == "mlp" and depth["cold_s"] > 0 and depth["warm_s"] > 0 and depth["cache_bytes"] > 0
    assert depth["ratio"] == depth["warm_s"] / mlp["plain_s"] and depth["rewrite_s"] == depth["cold_s"] - depth["warm_s"]
    assert depth["records"] > mlp["records"]  # the library's inner calls are logged too
    what = [m["what"] for m in report["micro"]]
    assert any("not logged" in w for w in what) and sum("tracking" in w for w in what) == 3
    assert all(m["value"] > 0 for m in report["micro"])
