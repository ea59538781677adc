"""Meta variables on real runs: `step` against the step each script knows it is in, for every loop shape;
`stage`; the three ways of adding custom meta variables; rank and world size under torchrun."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from helpers import FIXTURES, run_plain, run_tc
from traincheck_rewrite.trace import read_records

STEPS = FIXTURES / "steps"
SHAPES = ["epoch_batch", "grad_accum", "accum_modulo", "two_optimizers", "lbfgs", "while_true", "in_functions", "no_optimizer"]


def _run(tmp_path: Path, script: str, *extra: str):
    traced = run_tc(["--pyscript", str(STEPS / f"{script}.py"), "--copy-all-files", *extra], tmp_path, cwd=STEPS)
    assert traced.returncode == 0, traced.stderr
    return traced, sorted(read_records(traced.run_dir), key=lambda r: (r["process_id"], r["thread_id"], r["time"]))


def _marks(records):
    """(expected step, record) for each pre record of mark(k) = torch.full((1,), k)."""
    return [
        (r["args"]["1"]["int"], r)
        for r in records
        if r["type"] == "function_call (pre)" and r["function"] == "torch.full"
    ]


@pytest.mark.parametrize("shape", SHAPES)
def test_step_matches_the_scripts_own_count(tmp_path: Path, shape: str):
    traced, records = _run(tmp_path, shape)
    steps_done = int(traced.stdout.split()[-1])
    marks = _marks(records)
    assert len(marks) >= steps_done
    for expected, record in marks:
        assert record["meta_vars"]["step"] == expected, (expected, record["meta_vars"])
    assert max(r["meta_vars"]["step"] for r in records) == steps_done
    for r in records:  # every record of an optimizer step carries that step
        if r.get("function", "").endswith(".step") and r["type"] == "function_call (pre)":
            assert 1 <= r["meta_vars"]["step"] <= steps_done


def test_no_grad_setup_is_init_not_evaluation(tmp_path: Path):
    _, records = _run(tmp_path, "in_functions")
    setup = [r for e, r in _marks(records) if e == 0]
    assert setup and all(r["meta_vars"]["stage"] == "init" for r in setup)


def test_stages_follow_what_the_program_does(tmp_path: Path):
    _, records = _run(tmp_path, "stages", "--models-to-track", "model", "--meta-var", "experiment=baseline")
    calls = [r for r in records if r["type"] == "function_call (pre)"]
    stage_of = lambda fn: {r["meta_vars"]["stage"] for r in calls if r["function"] == fn}
    assert stage_of("torch.optim.sgd.SGD.step") == {"training"}
    assert stage_of("torch._tensor.Tensor.backward") == {"training"}
    assert stage_of("torch.serialization.save") == {"checkpointing"}
    forward = [r for r in calls if r["function"] == "torch.nn.modules.container.Sequential.forward"]
    assert {r["meta_vars"]["stage"] for r in forward} == {"training", "evaluation"}
    evaluation = [r for r in forward if r["meta_vars"]["stage"] == "evaluation"]
    assert len(evaluation) == 4 and all(r["meta_vars"].get("phase") == "validation" for r in evaluation)
    assert all("phase" not in r["meta_vars"] for r in forward if r["meta_vars"]["stage"] == "training")
    assert stage_of("torch.nn.modules.linear.Linear") == {"init"}
    post_of_save = [r for r in records if r.get("function") == "torch.serialization.save" and r["type"] != "function_call (pre)"]
    assert {r["meta_vars"]["stage"] for r in post_of_save} == {"checkpointing"}
    # static meta variable from the command line, in-code annotate()
    assert all(r["meta_vars"]["experiment"] == "baseline" for r in records)
    after = [r for r in calls if r["function"] == "torch.optim.sgd.SGD.step"]
    assert all(r["meta_vars"]["experiment_phase"] == "main" for r in after)


def test_an_eval_mode_check_in_the_first_training_iteration_is_training_as_in_later_ones(tmp_path: Path):
    # Made before the first optimizer step tells which loop trains, and relabelled then: a tracked model in eval mode
    # with grad on in the training loop's own iteration is training at step 1 as at steps 2 and 3 (pytorch-51800's
    # spectral norm run in eval mode before any training-mode forward is a training-stage fact).
    _, records = _run(tmp_path, "eval_mode_check", "--models-to-track", "model")
    marks = [(code, r["meta_vars"]["step"], r["meta_vars"]["stage"]) for code, r in _marks(records)]
    assert [m for m in marks if m[0] == 10] == [(10, 1, "training"), (10, 2, "training"), (10, 3, "training")]
    assert [m for m in marks if m[0] == 20] == [(20, 1, "evaluation"), (20, 2, "evaluation"), (20, 3, "evaluation")]
    assert [m for m in marks if m[0] == 30] == [(30, 0, "evaluation")] * 2


def test_in_code_api_is_a_no_op_without_the_tool():
    plain = run_plain([sys.executable, "stages.py"], cwd=STEPS)
    assert plain.returncode == 0 and plain.stdout == "done\n", plain.stderr


def test_meta_from_captures_the_programs_variables_and_a_user_step_wins(tmp_path: Path):
    config = tmp_path / "cfg.yaml"
    config.write_text(
        f"pyscript: {STEPS / 'custom_meta.py'}\ncopy_all_files: true\nmeta_from: {{epoch: epoch, step: my_step}}\n"
        "meta_vars: {experiment: baseline}\n"
    )
    traced = run_tc([str(config)], tmp_path / "out", cwd=STEPS)
    assert traced.returncode == 0, traced.stderr
    records = list(read_records(traced.run_dir))
    for expected, r in _marks(records):
        assert r["meta_vars"]["step"] == expected  # the program's own counter, not ours
    epochs = {r["meta_vars"].get("epoch") for r in records if r.get("function") == "torch.optim.sgd.SGD.step"}
    assert epochs == {0, 1}
    assert all(r["meta_vars"]["experiment"] == "baseline" for r in records)


def test_rank_and_world_size_on_every_record_of_each_rank(tmp_path: Path):
    fixture = FIXTURES / "ddp"
    traced = run_tc([str(fixture / "config.yaml")], tmp_path, cwd=fixture)
    assert traced.returncode == 0, traced.stderr
    records = list(read_records(traced.run_dir))
    by_pid: dict[int, set] = {}
    for r in records:  # torchrun's environment gives them from the first record on
        by_pid.setdefault(r["process_id"], set()).add((r["meta_vars"]["rank"], r["meta_vars"]["world_size"], r["meta_vars"]["local_rank"]))
    assert sorted(v for s in by_pid.values() for v in s) == [(0, 2, 0), (1, 2, 1)]
