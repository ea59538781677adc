"""Programs written for TrainCheck (its annotation API: `annotate_stage`, `meta_vars` / `META_VARS`) run under
tc-rewrite with or without traincheck installed, and what they annotate is the records' meta variables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from helpers import FIXTURES, ROOT, run_plain, run_tc
from traincheck_rewrite.rewrite import rewrite_source
from traincheck_rewrite.trace import read_records

FIXTURE = FIXTURES / "traincheck_api"
SCHEDULER_STEP = "torch.optim.lr_scheduler.LRScheduler.step"


def _traincheck_site() -> Path:
    """site-packages of the virtualenv holding traincheck 0.2.0 (scripts/traincheck_venv.sh makes it once)."""
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "traincheck_venv.sh")], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    venv = Path(proc.stdout.strip().splitlines()[-1])
    return venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


def _calls(run_dir: Path) -> list[dict]:
    records = sorted(read_records(run_dir), key=lambda r: r["time"])
    return [r for r in records if r["type"] == "function_call (pre)"]


def _stages(calls: list[dict], function: str) -> list[str]:
    return [r["meta_vars"]["stage"] for r in calls if r["function"] == function]


def test_a_program_written_for_traincheck_starts_and_its_stages_steps_and_meta_vars_are_on_the_records(tmp_path: Path):
    traced = run_tc([str(FIXTURE / "config.yaml")], tmp_path)
    assert traced.returncode == 0, traced.stderr[-3000:]
    assert "epoch 2 step 5" in traced.stdout
    calls = _calls(traced.run_dir)
    # annotate_stage("training") before scheduler.step(), with the model still in eval mode after test()
    assert _stages(calls, SCHEDULER_STEP) == ["training", "training"]
    forward = [r["meta_vars"] for r in calls if r["function"] == "__main__.Net.forward"]
    assert [(m["stage"], m["step"], m["epoch"]) for m in forward] == [
        ("training", 0, 1), ("training", 1, 1), ("training", 2, 1), ("testing", 2, 1),
        ("training", 3, 2), ("training", 4, 2), ("training", 5, 2), ("testing", 5, 2),
    ]  # fmt: skip
    # meta_vars["step"] = -1 at import: set-up has the program's step, and its stage
    construction = [r["meta_vars"] for r in calls if r["function"] == "torch.optim.adadelta.Adadelta"]
    assert construction == [{"step": -1, "stage": "init"}]


def test_guarded_annotations_are_honoured_and_the_program_runs_plainly_without_traincheck(tmp_path: Path):
    plain = run_plain([sys.executable, "guarded.py"], cwd=FIXTURE)
    assert plain.returncode == 0 and plain.stdout == "done\n", plain.stderr
    traced = run_tc(["--pyscript", str(FIXTURE / "guarded.py"), "--models-to-track", "model"], tmp_path)
    assert traced.returncode == 0, traced.stderr[-3000:]
    calls = _calls(traced.run_dir)
    assert _stages(calls, SCHEDULER_STEP) == ["training", "training"]  # model in eval mode: evaluation without them
    forward = [r["meta_vars"] for r in calls if r["function"] == "torch.nn.modules.container.Sequential.forward"]
    assert [(m["stage"], m["step"]) for m in forward] == [
        ("training", 1), ("training", 2), ("training", 3), ("evaluation", 3),
        ("training", 4), ("training", 5), ("training", 6), ("evaluation", 6),
    ]  # fmt: skip  (the step is still counted: the program does not set it)
    assert all(r["meta_vars"]["experiment"] == "guarded" for r in calls if r["meta_vars"]["step"] >= 1)


def test_with_traincheck_installed_its_other_names_come_from_it_and_the_annotations_still_reach_the_records(tmp_path: Path):
    site = _traincheck_site()
    assert (site / "traincheck" / "__init__.py").is_file()
    source = (FIXTURE / "guarded.py").read_text()
    program = tmp_path / "train.py"
    program.write_text(
        source.replace("    from traincheck import annotate_stage\n", "    from traincheck import Instrumentor, annotate_stage\n")
        .replace('print("done")', 'print("done", Instrumentor.__module__)')
    )
    traced = run_tc(["--pyscript", str(program)], tmp_path / "out", env_extra={"PYTHONPATH": str(site)})
    assert traced.returncode == 0, traced.stderr[-3000:]
    assert traced.stdout.splitlines()[-1] == "done traincheck.instrumentor.tracer"
    assert _stages(_calls(traced.run_dir), SCHEDULER_STEP) == ["training", "training"]


def test_only_the_annotation_api_is_redirected_and_every_line_stays_where_it_was():
    source = (
        "from traincheck import annotate_stage as stage\n"
        "from traincheck.instrumentor import (\n"
        "    META_VARS,\n"
        "    meta_vars,\n"
        ")\n"
        "from traincheck import Instrumentor, annotate_stage\n"
        "from traincheck.instrumentor.tracer import Instrumentor\n"
        "import traincheck_rewrite\n"
    )
    lines = rewrite_source(source, "train.py").splitlines()
    api = "traincheck_rewrite.runtime.traincheck_api"
    assert lines[0].endswith(f"from {api} import annotate_stage as stage")
    assert lines[1] == f"from {api} import ("
    assert lines[5] == f"from traincheck import Instrumentor, annotate_stage; from {api} import annotate_stage"
    assert lines[6:] == ["from traincheck.instrumentor.tracer import Instrumentor", "import traincheck_rewrite"]


def test_a_stage_the_program_set_is_kept_on_the_records_of_the_first_training_iteration(tmp_path: Path):
    """The first training iteration's records are relabelled once the training loop is known (step 1, and `training`
    for what was `init`): not their stage when the program set it."""
    program = tmp_path / "train.py"
    program.write_text(
        "import torch\n"
        "from traincheck import annotate_stage\n"
        "annotate_stage('init')\n"
        "model = torch.nn.Linear(2, 1)\n"
        "optimizer = torch.optim.SGD(model.parameters(), lr=0.1)\n"
        "for i in range(3):\n"
        "    optimizer.zero_grad()\n"
        "    model(torch.ones(2)).sum().backward()\n"
        "    optimizer.step()\n"
    )
    traced = run_tc(["--pyscript", str(program)], tmp_path / "out")
    assert traced.returncode == 0, traced.stderr[-3000:]
    calls = [r for r in _calls(traced.run_dir) if r["function"] == "torch.optim.optimizer.Optimizer.zero_grad"]
    assert [(r["meta_vars"]["stage"], r["meta_vars"]["step"]) for r in calls] == [("init", 1), ("init", 2), ("init", 3)]
