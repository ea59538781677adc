#!/usr/bin/env python3
"""What library depth adds to TrainCheck's invariants, and what it costs: the numbers behind the default.

    .venv/bin/python scripts/depth_invariants.py --infer /path/to/venv/bin/traincheck-infer [--workload mlp ...]

TrainCheck (`pip install traincheck==0.2.0`) lives in a separate virtualenv; this script only runs its
`traincheck-infer`. Each workload is traced with each library set (none, torch.optim, all three), the trace is
exported for the engine (`trace export`, see docs/traincheck.md), and the invariants are counted by relation, with
the run's wall time (warm rewrite cache), record count and inference time.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from traincheck_rewrite.trace.export import export_traincheck  # noqa: E402

LIBRARY_SETS = {
    "off": (),
    "optim": ("torch.optim",),
    "optim+nn": ("torch.optim", "torch.nn.modules", "torch.nn.functional"),
}


def measure(workload: str, libraries: tuple[str, ...], infer: str, cache: str, work: Path) -> dict:
    fixture = ROOT / "fixtures" / workload
    out = work / f"{workload}-{len(libraries)}"
    cmd = [sys.executable, "-m", "traincheck_rewrite", str(fixture / "config.yaml")]
    for library in libraries:
        cmd += ["--rewrite-libraries", library]
    env = {**os.environ, "TC_REWRITE_CACHE_DIR": cache}
    subprocess.run([*cmd, "--output-dir", str(out / "fill")], cwd=fixture, env=env, check=True, capture_output=True)  # fills the cache
    run_dir = out / "timed"
    start = time.perf_counter()
    subprocess.run([*cmd, "--output-dir", str(run_dir)], cwd=fixture, env=env, check=True, capture_output=True)
    run_s = time.perf_counter() - start
    exported = work / f"{out.name}-export"
    records = export_traincheck(run_dir, exported).records
    start = time.perf_counter()
    subprocess.run([infer, "-f", str(exported), "-o", str(work / f"{out.name}.json")], cwd=work, check=True,
                   capture_output=True)  # fmt: skip
    infer_s = time.perf_counter() - start
    relations = collections.Counter(json.loads(line)["relation"] for line in (work / f"{out.name}.json").open())
    return {"workload": workload, "libraries": list(libraries), "run_s": run_s, "records": records,
            "infer_s": infer_s, "invariants": sum(relations.values()), "relations": dict(relations)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--infer", required=True, help="path of TrainCheck's traincheck-infer")
    parser.add_argument("--workload", action="append", default=None, help="fixture name, repeatable [mlp, cnn]")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="tc-depth-") as tmp:
        work = Path(tmp)
        cache = str(work / "cache")
        for workload in args.workload or ["mlp", "cnn"]:
            for name, libraries in LIBRARY_SETS.items():
                r = measure(workload, libraries, args.infer, cache, work)
                contain = r["relations"].get("APIContainRelation", 0)
                print(f"{workload:<12} {name:<9} run {r['run_s']:6.2f} s  records {r['records']:>7}  "
                      f"invariants {r['invariants']:>5} (contain {contain:>4})  infer {r['infer_s']:6.1f} s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
