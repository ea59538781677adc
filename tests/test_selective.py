"""Selective collection (`--invariants`) and step sampling on real runs of the MLP fixture (20 training steps)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from helpers import FIXTURES, run_plain, run_tc
from traincheck_rewrite.trace import read_records

MLP = FIXTURES / "mlp"


def invariant(relation: str, *apis: str, precondition=None) -> str:
    params = [{"param_type": "APIParam", "api_full_name": a} for a in apis]
    return json.dumps({"text_description": "t", "relation": relation, "params": params,
                       "precondition": precondition or {"x": {"inverted": False, "preconditions": [{"clauses": "Unconditional"}]}}})


def test_sampling_keeps_warm_up_then_every_nth_step_and_the_program_output(tmp_path: Path):
    result = run_tc([str(MLP / "config.yaml"), "--sampling-interval", "5", "--warm-up-steps", "2"], tmp_path)
    assert result.returncode == 0, result.stderr
    records = list(read_records(result.run_dir))
    training = [r for r in records if r["meta_vars"].get("stage") == "training"]
    assert {r["meta_vars"]["step"] for r in training if r["type"] != "state_change"} == {1, 2, 7, 12, 17}
    assert {r["meta_vars"]["step"] for r in training if r.get("dump_loc") == "end of skipped steps"} == {6, 11, 16}
    assert any(r["meta_vars"]["step"] == 0 and r["type"] != "state_change" for r in records)  # set-up in full
    calls, inner = {}, {}
    for r in training:
        if r["type"] == "function_call (pre)":
            counts = calls if isinstance(r["site"], int) else inner  # the first step's optimizer also makes its state
            counts[r["meta_vars"]["step"]] = counts.get(r["meta_vars"]["step"], 0) + 1
    assert len(set(calls.values())) == 1, calls  # a recorded step is recorded whole
    assert inner.keys() == calls.keys()
    plain = run_plain([sys.executable, "train.py"], MLP)
    assert (result.run_dir / "program_output.txt").read_text() == plain.stdout + plain.stderr


def test_sampling_skips_the_evaluation_of_a_skipped_step_and_keeps_evaluation_outside_the_training_loop(tmp_path: Path):
    """An evaluation kept while its step's training calls are dropped stands next to other steps' training calls:
    relations between them fail on every sampled run (bug zoo: false alarms at steps 10 and 15)."""
    periodic = FIXTURES / "bugs" / "freeze_undone"  # evaluates inside the training loop's iteration every 5th step
    result = run_tc([str(periodic / "config.yaml"), "--sampling-interval", "10", "--warm-up-steps", "10"], tmp_path / "p")
    assert result.returncode == 0, result.stderr
    calls = [r for r in read_records(result.run_dir) if r["type"] == "function_call (pre)"]
    assert {r["meta_vars"]["step"] for r in calls if r["meta_vars"]["stage"] == "training"} == set(range(1, 11)) | {20, 30}
    assert {r["meta_vars"]["step"] for r in calls if r["meta_vars"]["stage"] == "evaluation"} == {5, 10, 20, 30}
    steps = FIXTURES / "steps"  # evaluates in the epoch loop, after the training loop: kept in full
    result = run_tc(["--pyscript", str(steps / "stages.py"), "--copy-all-files", "--sampling-interval", "10", "--warm-up-steps", "1"], tmp_path / "s", cwd=steps)
    assert result.returncode == 0, result.stderr
    calls = [r for r in read_records(result.run_dir) if r["type"] == "function_call (pre)"]
    assert {r["meta_vars"]["step"] for r in calls if r["meta_vars"]["stage"] == "training"} == {1}
    evaluation = [r for r in calls if r["meta_vars"]["stage"] == "evaluation" and r["function"] == "torch.nn.modules.container.Sequential.forward"]
    assert [r["meta_vars"]["step"] for r in evaluation] == [3, 3, 6, 6]


def test_invariants_select_apis_their_arguments_and_state(tmp_path: Path):
    inv = tmp_path / "inv.json"
    inv.write_text("\n".join([
        invariant("FunctionLeadRelation", "torch.optim.optimizer.Optimizer.zero_grad", "torch.optim.sgd.SGD.step"),
        invariant("DistinctArgumentRelation", "torch.nn.functional.cross_entropy"),
        invariant("FunctionCoverRelation", "torch.optim.sgd.SGD._init_group", "torch.optim.sgd.SGD.step"),
    ]) + "\n")
    # without torch.optim's inner calls (default library depth logs them): SGD._init_group is then never logged
    result = run_tc([str(MLP / "config.yaml"), "--invariants", str(inv), "--rewrite-libraries", "torch.nn.modules"], tmp_path / "runs")
    assert result.returncode == 0, result.stderr
    assert "selective collection: 3 invariants" in result.stderr and "select 4 APIs (1 with arguments) and no model state" in result.stderr
    assert "warning: 1 invariants name APIs this run never logged" in result.stderr and "SGD._init_group" in result.stderr
    runtime = json.loads((result.run_dir / "run.json").read_text())["runtime"]
    assert runtime["sampling"] == {"interval": 10, "warm_up": 10}  # TrainCheck's defaults with invariants
    records = list(read_records(result.run_dir))
    assert not [r for r in records if r["type"] == "state_change"]  # no invariant is about model state
    # backward, named by no invariant, keeps its records: without them the engine sees SGD.step repeat when a
    # zero_grad goes missing, drops it from lead/cover checking and reports the violation at step 1 (bug zoo)
    assert {r["function"] for r in records} == {
        "torch.optim.optimizer.Optimizer.zero_grad", "torch.optim.sgd.SGD.step", "torch.nn.functional.cross_entropy",
        "torch._tensor.Tensor.backward",
    }
    pres = [r for r in records if r["type"] == "function_call (pre)"]
    assert all(r["args"] for r in pres if r["function"].endswith("cross_entropy"))
    assert all(r["args"] == {} and r["kwargs"] == {} for r in pres if not r["function"].endswith("cross_entropy"))
    assert {r["meta_vars"]["step"] for r in pres} == set(range(1, 11)) | {20}  # steps still counted


def test_bad_invariant_files_stop_before_anything_runs(tmp_path: Path):
    inv = tmp_path / "inv.json"
    inv.write_text(invariant("FunctionLeadRelation", "torch.a", "torch.b") + "\n{not json\n")
    result = run_tc([str(MLP / "config.yaml"), "--invariants", str(inv)], tmp_path / "runs")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and f"{inv}:2: not JSON" in result.stderr
    inv.write_text('{"relation": "X"}\n')
    result = run_tc([str(MLP / "config.yaml"), "--invariants", str(inv)], tmp_path / "runs")
    assert result.returncode == 2 and f"{inv}:1: not a TrainCheck invariant" in result.stderr
    assert not (tmp_path / "runs").exists()


def _data_ids(run_dir: Path, function: str) -> dict:
    """(step, n-th call of the step) -> the data ids of the call's arguments and return value."""
    out, seen, pres = {}, {}, {}
    for r in read_records(run_dir, kinds=("API",)):
        if r.get("function") != function:
            continue
        if r["type"] == "function_call (pre)":
            step = r["meta_vars"]["step"]
            seen[step] = seen.get(step, 0) + 1
            pres[r["func_call_id"]] = (step, seen[step])
            out[pres[r["func_call_id"]]] = [a.get("data_id") for a in r["args"].values()]
        elif r["type"] == "function_call (post)":
            out[pres[r["func_call_id"]]].append(r["return_values"].get("data_id"))
    return out


def _numbering_kept(tmp_path: Path, *flags: str) -> None:
    full = run_tc([str(MLP / "config.yaml")], tmp_path / "full")
    part = run_tc([str(MLP / "config.yaml"), *flags, "--sampling-interval", "5", "--warm-up-steps", "2"], tmp_path / "part")
    assert full.returncode == part.returncode == 0, part.stderr
    everything = _data_ids(full.run_dir, "torch.nn.functional.cross_entropy")
    kept = _data_ids(part.run_dir, "torch.nn.functional.cross_entropy")
    assert {step for step, _ in kept} >= {1, 2, 7, 12, 17} and len(kept) < len(everything)
    assert all(None not in ids for ids in kept.values())
    assert kept == {key: everything[key] for key in kept}


def test_a_sampled_run_numbers_tensors_as_the_full_run_does(tmp_path: Path):
    """The engine keeps data ids as argument values: the calls of skipped steps number their tensors (values.number),
    so a sampled run gives a tensor the id the full run its invariants came from gave it."""
    _numbering_kept(tmp_path)


def test_a_selective_run_numbers_tensors_as_the_full_run_does(tmp_path: Path):
    """Functions no invariant names are not recorded but still number their tensors (logged_importlib_bootstrap.numbered):
    without it every id after the first unselected call differs from the full run's."""
    inv = tmp_path / "inv.json"
    inv.write_text(invariant("DistinctArgumentRelation", "torch.nn.functional.cross_entropy"))
    _numbering_kept(tmp_path, "--invariants", str(inv))


def test_the_forward_of_a_programs_own_module_is_not_called_unrecordable_and_is_recorded(tmp_path: Path):
    inv = tmp_path / "inv.json"
    inv.write_text("\n".join([
        invariant("FunctionCoverRelation", "__main__.Net.forward", "torch.optim.optimizer.Optimizer.zero_grad"),
        invariant("FunctionLeadRelation", "numpy.linalg.norm", "torch.optim.optimizer.Optimizer.zero_grad"),
    ]) + "\n")
    result = run_tc([str(FIXTURES / "traincheck_api" / "config.yaml"), "--invariants", str(inv)], tmp_path / "runs")
    assert result.returncode == 0, result.stderr
    # a module's call is named after its forward wherever its class is defined; numpy is not instrumented
    assert "warning: 1 selected APIs are outside modules_to_instr and cannot be recorded: numpy.linalg.norm" in result.stderr
    assert "Net.forward" not in result.stderr
    assert "__main__.Net.forward" in {r["function"] for r in read_records(result.run_dir)}


def _identities(run_dir: Path) -> dict:
    """(step, var_name, dump_loc, n-th such record) -> (data_id, grad_id) of each state record."""
    out, seen = {}, {}
    for r in sorted((r for r in read_records(run_dir) if r["type"] == "state_change"), key=lambda r: r["time"]):
        assert (r["attributes"]["grad"] is None) == (r["attributes"]["grad_id"] == 0)  # 0: no grad, never null
        key = (r["meta_vars"]["step"], r["var_name"], r["dump_loc"])
        seen[key] = seen.get(key, 0) + 1
        out[(*key, seen[key])] = (r["attributes"]["data_id"], r["attributes"]["grad_id"])
    return out


def test_state_records_carry_identities_numbered_as_in_the_full_run(tmp_path: Path):
    """Each tracked tensor's data and grad identity (TrainCheck's `_TRAINCHECK_data_ID` / `_grad_ID`) is a number
    the tracker gives, the same in a sampled run as in the full run its invariants came from, and in a run with
    other data."""
    full = run_tc([str(MLP / "config.yaml")], tmp_path / "full")
    part = run_tc([str(MLP / "config.yaml"), "--sampling-interval", "5", "--warm-up-steps", "2"], tmp_path / "part")
    assert full.returncode == part.returncode == 0, part.stderr
    everything, kept = _identities(full.run_dir), _identities(part.run_dir)
    data_ids = {}
    for (step, var, _, _), (data_id, grad_id) in everything.items():
        data_ids.setdefault(var, set()).add(data_id)
    assert all(len(ids) == 1 for ids in data_ids.values()), data_ids  # SGD updates in place: one storage each
    assert len({next(iter(ids)) for ids in data_ids.values()}) == len(data_ids) == 4
    grads = {step: grad for (step, var, _, _), (_, grad) in everything.items() if var == "model.0.weight" and grad}
    assert len(set(grads.values())) == len(grads) >= 19  # zero_grad(set_to_none): each step's grad is a new one
    compared = {key: ids for key, ids in kept.items() if key[2] != "end of skipped steps"}
    assert {key[0] for key in compared} >= {1, 2, 7, 12, 17}
    assert compared == {key: everything[key] for key in compared}


BUFFER_REFRESH = '''import torch, torch.nn as nn, torch.nn.functional as F
torch.manual_seed(0)
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.zeros(4))
        self.fc = nn.Linear(4, 2)
    def forward(self, x):
        return self.fc(x - self.shift)
model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
for step in range(1, 7):
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad()
    if step == 3:
        model.shift.copy_(x.mean(0))
'''


def test_a_tracked_tensors_in_place_change_is_recorded_where_the_full_run_records_it(tmp_path: Path):
    """`copy_` into a tracked buffer, named by no invariant: no call record, but its change is recorded at the call,
    at its step, as in the full run; not at the next logged call that checks (on several ranks that moment differs
    more between them, and the engine's consistency check compares the ranks' values by how long they overlap)."""
    script = tmp_path / "refresh.py"
    script.write_text(BUFFER_REFRESH)
    inv = tmp_path / "inv.json"
    tensor = {"param_type": "VarTypeParam", "var_type": "torch.Tensor", "attr_name": "data"}
    inv.write_text(json.dumps({"text_description": "t", "relation": "ConsistencyRelation", "params": [tensor, tensor],
                               "precondition": {"x": {"inverted": False, "preconditions": [{"clauses": "Unconditional"}]}}}) + "\n")
    changes = {}
    for name, flags in (("full", []), ("selective", ["--invariants", str(inv)])):
        result = run_tc(["--pyscript", str(script), "--models-to-track", "model", *flags], tmp_path / name)
        assert result.returncode == 0, result.stderr
        records = list(read_records(result.run_dir))
        changes[name] = [(r["meta_vars"]["step"], r["dump_loc"]) for r in records
                         if r["type"] == "state_change" and r["var_name"] == "model.shift" and r["mode"] == "update"]
        assert name == "full" or "torch.Tensor.copy_" not in {r.get("function") for r in records}
    assert changes["selective"] == changes["full"] == [(3, "torch.Tensor.copy_")]
