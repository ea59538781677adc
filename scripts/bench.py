#!/usr/bin/env python3
"""Wall time of fixtures run plainly and under tc-rewrite, alternating, medians; trace size and record counts.

    .venv/bin/python scripts/bench.py            # every workload, 5 alternating pairs each
    .venv/bin/python scripts/bench.py --quick    # one workload, 2 pairs (a smoke test of the benchmark itself)

The instrumented time is that of the whole `tc-rewrite CONFIG` command (rewrite, launch, run, record count), so
it includes what a user waits for. With library depth (`rewrite_libraries`), one run starts with an empty rewrite
cache (every library module is rewritten: the cold start-up) and the others find it full (warm).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKLOADS = ("mlp", "cnn", "transformer")
DEPTH_LIBRARIES = ("torch.optim", "torch.nn.modules", "torch.nn.functional")


def _timed(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
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


def bench_depth(name: str, runs: int, plain_s: float) -> dict:
    """The workload with library depth on: one run with an empty rewrite cache, then `runs` with it full."""
    fixture = ROOT / "fixtures" / name
    with tempfile.TemporaryDirectory(prefix="tc-bench-cache-") as cache, tempfile.TemporaryDirectory(prefix="tc-bench-") as out:
        env = {**os.environ, "TC_REWRITE_CACHE_DIR": cache}
        cmd = [sys.executable, "-m", "traincheck_rewrite", str(fixture / "config.yaml"), "--output-dir", out]
        for library in DEPTH_LIBRARIES:
            cmd += ["--rewrite-libraries", library]
        cold = _timed(cmd, fixture, env)
        warm = statistics.median(_timed(cmd, fixture, env) for _ in range(runs))
        last = max(Path(out).iterdir(), key=lambda p: p.stat().st_mtime)
        records = json.loads((last / "run.json").read_text())["records"]
        cache_bytes = sum(p.stat().st_size for p in Path(cache).iterdir())
    return {
        "workload": name,
        "libraries": list(DEPTH_LIBRARIES),
        "cold_s": cold,
        "warm_s": warm,
        "rewrite_s": cold - warm,
        "ratio": warm / plain_s,
        "records": records["api"] + records["state"],
        "cache_bytes": cache_bytes,
    }


def micro_benchmarks(repeats: int) -> list[tuple[str, float, str]]:
    """In-process costs: the hook per call, and model tracking per optimizer step for a ~1M-parameter model."""
    import os
    import timeit

    import torch

    from traincheck_rewrite.runtime import recorder
    from traincheck_rewrite.runtime.tracking import Tracker

    torch.set_num_threads(1)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        recorder.start(os.path.join(tmp, "traces"), ("torch",))
        hook = recorder.hook
        x = torch.ones(8, 8)
        n = 20000 * repeats

        def user(v):
            return v

        for label, fn, args in (
            ("hook, call not logged (user function)", user, (1,)),
            ("logged call, no arguments", torch.get_default_dtype, ()),
            ("logged call, two tensor arguments", torch.add, (x, x)),
        ):
            per = min(timeit.repeat(lambda: hook(1, fn)(*args), number=n, repeat=3)) / n
            out.append((label, per * 1e6, "us per call"))
        model = torch.nn.Sequential(torch.nn.Linear(1000, 1000), torch.nn.Linear(1000, 24))  # 1,025,024 parameters
        params = sum(p.numel() for p in model.parameters())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        model(torch.randn(4, 1000)).sum().backward()
        for fmt in ("hash", "stats", "full"):
            tracker = Tracker(fmt, "proxy")
            tracker.track("model", model, lambda record: None)
            times = []
            for _ in range(3 * repeats):
                optimizer.step()  # every parameter changes
                start = time.perf_counter()
                tracker.check("step", lambda record: None)
                times.append(time.perf_counter() - start)
            out.append((f"tracking {params:,} parameters, {fmt}", statistics.median(times) * 1e3, "ms per step"))
        recorder._state = None
    return out


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
    depth = [bench_depth(r["workload"], 1 if args.quick else 3, r["plain_s"]) for r in results]
    micro = micro_benchmarks(1 if args.quick else 3)
    if args.json:
        micro_json = [dict(zip(("what", "value", "unit"), m)) for m in micro]
        print(json.dumps({"workloads": results, "depth": depth, "micro": micro_json}, indent=2))
        return
    print(f"{'workload':<12} {'plain s':>8} {'traced s':>9} {'ratio':>6} {'trace KiB':>10} {'records':>8} {'B/rec':>6}")
    for r in results:
        print(
            f"{r['workload']:<12} {r['plain_s']:>8.2f} {r['traced_s']:>9.2f} {r['ratio']:>6.2f} "
            f"{r['trace_bytes'] / 1024:>10.1f} {r['records']:>8} {r['bytes_per_record']:>6.1f}"
        )
    print(f"(medians of {pairs} alternating pairs; python {sys.version.split()[0]})")
    print()
    print(f"library depth ({', '.join(DEPTH_LIBRARIES)}):")
    print(f"{'workload':<12} {'cold s':>8} {'warm s':>8} {'rewrite s':>10} {'ratio':>6} {'records':>8} {'cache KiB':>10}")
    for d in depth:
        print(
            f"{d['workload']:<12} {d['cold_s']:>8.2f} {d['warm_s']:>8.2f} {d['rewrite_s']:>10.2f} {d['ratio']:>6.2f} "
            f"{d['records']:>8} {d['cache_bytes'] / 1024:>10.1f}"
        )
    print("(cold: empty rewrite cache; warm: median with the cache full; ratio: warm / plain)")
    print()
    for what, value, unit in micro:
        print(f"{what:<48} {value:>9.2f} {unit}")


if __name__ == "__main__":
    main()
