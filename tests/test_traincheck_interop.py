"""The whole TrainCheck workflow with the real engine (traincheck==0.2.0, in its own virtualenv made by
scripts/traincheck_venv.sh): collect a healthy two-rank run, export, infer invariants; check a second healthy run
collected selectively (--invariants, sampled) and a run with a planted bug (zero_grad skipped from step 20 on)."""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import FIXTURES, ROOT, run_tc
from traincheck_rewrite.invariants import runtime_name
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
    plain = json.loads((result.run_dir / "run.json").read_text())["plain_traces"]
    assert plain["written"] and plain["while_running"], plain  # two torchrun ranks followed live
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
    # no ConsistentInputOutputRelation: here it was only about tensor methods, which traincheck 0.2.0 leaves out of
    # inference under their TrainCheck names (torch._C.TensorBase.*: '._' is in its ANALYSIS_SKIP_FUNC_NAMES)
    for kind in ("APIContainRelation", "FunctionLeadRelation", "FunctionCoverRelation", "ConsistentOutputRelation", "ConsistencyRelation"):
        assert relations[kind] > 0, (kind, relations)
    texts = invariants.read_text()
    assert "Optimizer.zero_grad() changes Parameter.grad" in texts and "Parameter.data stays consistent" in texts
    named = {  # as the runtime names them (the export writes torch._C.TensorBase.* for torch.Tensor.*)
        runtime_name(p.get("api_full_name") or p.get("api_name") or "")
        for line in texts.splitlines()
        for p in json.loads(line)["params"]
    } - {""}

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
    # only the APIs the invariants name, and backward (it parts the optimizer steps in the engine's event table)
    logged = {r["function"] for r in read_records(run_dir, kinds=("API",))}
    assert logged and logged <= named | {"torch._tensor.Tensor.backward"}, logged - named
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


def _trace_vocabulary(folder: Path) -> tuple[set[str], set[str], set[str]]:
    """What a plain trace folder records: API names, attributes of its state records, attributes of the tensors in
    its argument and return envelopes."""
    functions, state, envelopes = set(), set(), set()

    def walk(value) -> None:
        if isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            for k, v in value.items():
                if k.startswith("torch.") and k.endswith("Tensor") and isinstance(v, dict):
                    envelopes.update(v)
                else:
                    walk(v)

    for path in [*folder.glob("trace_*"), *folder.glob("proxy_log.json")]:
        for line in path.open():
            record = json.loads(line)
            if "function" in record:
                functions.add(record["function"])
            state.update(record.get("attributes") or {})
            walk([record.get("args"), record.get("kwargs"), record.get("return_values")])
    return functions, state, envelopes


def _checkable(invariants: Path, folders: list[Path], out: Path) -> collections.Counter:
    """Write to `out` the invariants of `invariants` about APIs and attributes that every trace of `folders` records
    with one meaning; return their count per relation."""
    vocabularies = [_trace_vocabulary(f) for f in folders]
    functions, state, envelopes = (set.intersection(*(v[i] for v in vocabularies)) for i in range(3))
    kept = []
    for line in invariants.read_text().splitlines():
        invariant = json.loads(line)
        about_state = invariant["relation"] in ("APIContainRelation", "ConsistencyRelation")
        apis, attributes = set(), set()
        for param in invariant["params"]:
            apis.add(param.get("api_full_name") or param.get("api_name"))
            attributes.add(param.get("attr_name") or (param.get("additional_path") or [None])[0])
        if any(str(a).startswith("_TRAINCHECK_") for a in attributes):
            continue  # ids: memory addresses in TrainCheck's traces (a fresh `.data` each read), numbers in ours
        if apis - {None} <= functions and attributes - {None} <= (state if about_state else envelopes):
            kept.append(line)
    out.write_text("".join(line + "\n" for line in kept))
    return collections.Counter(json.loads(line)["relation"] for line in kept)


# Invariants one collector's trace supports and the other's does not, each for a reason found in both traces (see
# docs/traincheck.md, "Invariants across collectors"). Keys: (invariant inferred from, its text).
COLLECTOR_DIFFERENCES = {
    ("theirs", "SGD.step() changes Parameter.grad: None --> non-zero"):
        "TrainCheck's proxy sees a gradient when the optimizer reads it; ours records it inside backward, which sets it",
    ("theirs", "SGD.step() always calls sgd._single_tensor_sgd()"):
        "under TrainCheck's collector momentum_buffer_list stays [None, ...] at every step (the run computes "
        "something else); in the program, and in our trace, momentum buffers exist from step 2",
    ("theirs", "Sequential.forward() always calls Linear.forward()"): "TrainCheck writes module arguments as {}",
    ("theirs", "Sequential.forward() always calls ReLU.forward()"): "TrainCheck writes module arguments as {}",
    ("ours", "Sequential.forward() always calls ReLU.forward()"): "TrainCheck writes module arguments as {}",
    ("ours", "SGD.step() changes Parameter.data: non-zero --> non-zero"):
        "TrainCheck's proxy log loses its last records: the last step's update is not in its trace",
    ("ours", "sgd.sgd() changes Parameter.data: non-zero --> non-zero"): "the same: the last step's update is lost",
    ("ours", "SGD.step() always calls Optimizer._optimizer_step_code()"):
        "TrainCheck's SGD.step record is the inner of torch.optim's two wrappers; ours the outer, which calls it",
    ("theirs", "SGD.step() always calls sgd.sgd()"): "the same: its momentum_buffer_list argument is [None, ...]",
    ("theirs", "sgd.sgd() always calls sgd._single_tensor_sgd()"): "the same: momentum_buffer_list [None, ...]",
    ("theirs", "sgd.sgd() changes Parameter.grad: None --> non-zero"):
        "as SGD.step's: TrainCheck's proxy sees the gradient when the optimizer reads it",
    ("theirs", "init.kaiming_uniform_() always calls torch.is_grad_enabled()"):
        "torch.no_grad().__enter__ calls it, in torch.autograd.grad_mode, which is not rewritten (TrainCheck patches "
        "torch.is_grad_enabled wherever it is called)",
    ("theirs", "init.uniform_() always calls torch.is_grad_enabled()"): "the same: no_grad().__enter__",
    ("theirs", "Linear.reset_parameters() always calls torch.is_grad_enabled()"): "the same: no_grad().__enter__",
}
DEPTH = ["--rewrite-libraries", "torch.optim", "torch.nn.modules", "torch.nn.init"]


@pytest.mark.slow
def test_invariants_from_either_collector_hold_on_the_others_trace_of_a_healthy_run(tmp_path: Path):
    """The MLP fixture traced by traincheck-collect and by us (torch.optim, torch.nn.modules and torch.nn.init
    rewritten, so that both record the calls torch makes inside the program's); invariants inferred from each trace,
    restricted to the APIs and attributes both traces record (TrainCheck's also name torch's import-time
    registrations, its own hashing calls and the ids it stores), are checked on the other trace: no violation
    either way but the listed collector differences."""
    engine = _engine()
    fixture = FIXTURES / "mlp"
    ours = run_tc([str(fixture / "config.yaml"), *DEPTH], tmp_path / "ours")
    assert ours.returncode == 0, ours.stderr[-3000:]
    src = tmp_path / "src"
    shutil.copytree(fixture, src)  # traincheck-collect writes beside the script
    theirs = tmp_path / "theirs"
    proc = subprocess.run(
        [str(engine / "traincheck-collect"), "--pyscript", "train.py", "--models-to-track", "model", "--output-dir", str(theirs)],
        cwd=src, capture_output=True, text=True, timeout=1200,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    inferred = {}
    for name, folder in (("ours", ours.run_dir), ("theirs", theirs)):
        inferred[name] = tmp_path / f"{name}_invariants.json"
        proc = subprocess.run([str(engine / "traincheck-infer"), "-f", str(folder), "-o", str(inferred[name])],
                              capture_output=True, text=True, cwd=tmp_path, timeout=1200)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    for source, target in (("theirs", ours.run_dir), ("ours", theirs)):
        checkable = tmp_path / f"{source}_checkable.json"
        relations = _checkable(inferred[source], [ours.run_dir, theirs], checkable)
        assert sum(relations.values()) >= 50 and relations["APIContainRelation"] and relations["FunctionLeadRelation"], relations
        report = _check(engine, target, checkable, tmp_path / f"{source}_on_{target.name}")
        unexplained = [v["display_name"] for v in report["violations"] if (source, v["display_name"]) not in COLLECTOR_DIFFERENCES]
        assert unexplained == [], (source, unexplained)

    # --invariants takes TrainCheck's invariant file as it is; the selective run passes what the full one passed
    selective = run_tc([str(fixture / "config.yaml"), "--invariants", str(inferred["theirs"]), *DEPTH], tmp_path / "selective")
    assert selective.returncode == 0 and "selective collection:" in selective.stderr, selective.stderr[-3000:]
    report = _check(engine, selective.run_dir, tmp_path / "theirs_checkable.json", tmp_path / "selective_check")
    unexplained = [v["display_name"] for v in report["violations"] if ("theirs", v["display_name"]) not in COLLECTOR_DIFFERENCES]
    assert unexplained == [], unexplained
