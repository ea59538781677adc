#!/usr/bin/env python3
"""Wall time of fixtures run plainly and under tc-rewrite, alternating, medians; trace size and record counts.

    .venv/bin/python scripts/bench.py            # every workload, 5 alternating pairs each
    .venv/bin/python scripts/bench.py --quick    # one workload, 2 pairs (a smoke test of the benchmark itself)

The instrumented time is that of the whole `tc-rewrite CONFIG` command (rewrite, launch, run, record count), so
it includes what a user waits for.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("mlp", "cnn", "transformer")


def _timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"bench: {' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-500:]}")
    return elapsed


def bench_workload(name: str, pairs: int) -> dict:
    fixture = ROOT / "fixtures" / name
    plain, traced, runs = [], [], []
    with tempfile.TemporaryDirectory(prefix="tc-bench-") as out:
        for _ in range(pairs):
            plain.append(_timed([sys.executable, "train.py"], fixture))
            before = set(Path(out).iterdir())
            traced.append(
                _timed([sys.executable, "-m", "traincheck_rewrite", str(fixture / "config.yaml"), "--output-dir", out], fixture)
            )
            (run_dir,) = set(Path(out).iterdir()) - before
            runs.append(run_dir)
        info = json.loads((runs[-1] / "run.json").read_text())
        trace_bytes = sum(p.stat().st_size for p in (runs[-1] / "traces").iterdir())
    records = info["records"]["api"] + info["records"]["state"]
    p, t = statistics.median(plain), statistics.median(traced)
    return {
        "workload": name,
        "plain_s": p,
        "traced_s": t,
        "ratio": t / p,
        "trace_bytes": trace_bytes,
        "records": records,
        "bytes_per_record": trace_bytes / records if records else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one workload, two pairs")
    parser.add_argument("--pairs", type=int, default=None, help="alternating plain/traced pairs per workload")
    parser.add_argument("--workload", action="append", choices=WORKLOADS, help="repeatable; default: all")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    workloads = args.workload or (["mlp"] if args.quick else list(WORKLOADS))
    pairs = args.pairs or (2 if args.quick else 5)
    results = [bench_workload(w, pairs) for w in workloads]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'workload':<12} {'plain s':>8} {'traced s':>9} {'ratio':>6} {'trace KiB':>10} {'records':>8} {'B/rec':>6}")
    for r in results:
        print(
            f"{r['workload']:<12} {r['plain_s']:>8.2f} {r['traced_s']:>9.2f} {r['ratio']:>6.2f} "
            f"{r['trace_bytes'] / 1024:>10.1f} {r['records']:>8} {r['bytes_per_record']:>6.1f}"
        )
    print(f"(medians of {pairs} alternating pairs; python {sys.version.split()[0]})")


if __name__ == "__main__":
    main()
