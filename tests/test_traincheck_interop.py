"""The whole TrainCheck workflow with the real engine (traincheck==0.2.0, in its own virtualenv made by
scripts/traincheck_venv.sh): collect a healthy two-rank run, export, infer invariants; check a second healthy run
collected selectively (--invariants, sampled) and a run with a planted bug (zero_grad skipped from step 20 on)."""

from __future__ import annotations

import collections
import json
import subprocess
from pathlib import Path

from helpers import FIXTURES, ROOT, run_tc
from traincheck_rewrite.trace import read_records

CONFIG = FIXTURES / "interop" / "config.yaml"
BUG_STEP = 20


def _engine() -> Path:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "traincheck_venv.sh")], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1]) / "bin"


def _collect_and_export(tmp: Path, name: str, *args: str) -> tuple[Path, Path, str]:
    """A run folder, which the engine reads as it is (the plain traces written beside traces/)."""
    result = run_tc([str(CONFIG), *args], tmp / name)
    assert result.returncode == 0 and result.run_dir is not None, result.stderr[-3000:]
    assert json.loads((result.run_dir / "run.json").read_text())["plain_traces"]["written"]
    return result.run_dir, result.run_dir, result.stderr


def _check(engine: Path, export: Path, invariants: Path, out: Path) -> dict:
    proc = subprocess.run(
        [str(engine / "traincheck-check"), "-f", str(export), "-i", str(invariants), "-o", str(out), "--no-html-report"],
        capture_output=True, text=True, cwd=out.parent, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (summary,) = out.glob("*/violations_summary.json")
    return json.loads(summary.read_text())


def test_infer_from_our_traces_then_check_a_healthy_and_a_buggy_run(tmp_path: Path):
    engine = _engine()

    # 1. healthy reference run, everything recorded
    _, ref_export, _ = _collect_and_export(tmp_path, "ref")
    invariants = tmp_path / "invariants.json"
    proc = subprocess.run(
        [str(engine / "traincheck-infer"), "-f", str(ref_export), "-o", str(invariants)],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    relations = collections.Counter(json.loads(line)["relation"] for line in invariants.read_text().splitlines())
    for kind in ("APIContainRelation", "FunctionLeadRelation", "FunctionCoverRelation", "ConsistentInputOutputRelation", "ConsistencyRelation"):
        assert relations[kind] > 0, (kind, relations)
    texts = invariants.read_text()
    assert "Optimizer.zero_grad() changes Parameter.grad" in texts and "Parameter.data stays consistent" in texts
    named = {
        p.get("api_full_name") or p.get("api_name")
        for line in texts.splitlines()
        for p in json.loads(line)["params"]
    } - {None}

    # 2. second healthy run, selective and sampled (TrainCheck's defaults with invariants: warm-up 10, every 10th)
    run_dir, ok_export, stderr = _collect_and_export(tmp_path, "ok", "--invariants", str(invariants))
    assert "selective collection:" in stderr
    training = [r for r in read_records(run_dir) if r["meta_vars"].get("stage") == "training"]
    sampled = set(range(1, 11)) | {20, 30}
    assert {r["meta_vars"]["step"] for r in training if r["type"] != "state_change"} == sampled
    # what the skipped steps changed is recorded once, as the last skipped step, before the next recorded one
    assert {(r["meta_vars"]["step"], r["dump_loc"]) for r in training if r["meta_vars"]["step"] not in sampled} == {
        (19, "end of skipped steps"),
        (29, "end of skipped steps"),
    }
    logged = {r["function"] for r in read_records(run_dir, kinds=("API",))}
    assert logged and logged <= named, logged - named
    healthy = _check(engine, ok_export, invariants, tmp_path / "ok_check")
    assert healthy["violations"] == [] and healthy["first_violation_step"] is None, healthy

    # 3. the planted bug, every step recorded so that its first step is in the trace
    _, bug_export, _ = _collect_and_export(
        tmp_path, "bug", "--invariants", str(invariants), "--sampling-interval", "1", "--", "--skip-zero-grad-from", str(BUG_STEP)
    )
    buggy = _check(engine, bug_export, invariants, tmp_path / "bug_check")
    assert buggy["first_violation_step"] == BUG_STEP, buggy
    assert all(v["first_step"] >= BUG_STEP for v in buggy["violations"]), buggy
    assert any("zero_grad" in v["display_name"] and v["relation_type"] == "FunctionCoverRelation" for v in buggy["violations"]), buggy
