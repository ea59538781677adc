"""`tc-rewrite trace diff` on real runs of fixtures/diverge: a healthy run, a second healthy run of the same seed, and
runs that differ from it by one planted change (grads no longer cleared from step 5; another learning rate; one rank
nudging its weights at step 3)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import FIXTURES, ROOT

DIVERGE = FIXTURES / "diverge"
TRAIN = (DIVERGE / "train.py").read_text().splitlines()
ZERO_GRAD_LINE = next(i for i, line in enumerate(TRAIN, 1) if "optimizer.zero_grad()" in line)
FORWARD_LINE = next(i for i, line in enumerate(TRAIN, 1) if "model(x)" in line)
SGD_LINE = next(i for i, line in enumerate(TRAIN, 1) if "torch.optim.SGD(" in line)
PERTURB_LINE = next(i for i, line in enumerate(TRAIN, 1) if ".add_(0.01)" in line)
PARAMS = ["model.0.bias", "model.0.weight", "model.2.bias", "model.2.weight"]


def diff(*args: str) -> tuple[int, str, str]:
    proc = subprocess.run([sys.executable, "-m", "traincheck_rewrite", "trace", "diff", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def diff_json(*args: str) -> tuple[int, dict]:
    code, out, err = diff(*args, "--json")
    assert err == "", err
    return code, json.loads(out)


@pytest.fixture(scope="module")
def runs(traced) -> dict[str, Path]:
    config = DIVERGE / "config.yaml"
    return {
        "healthy": traced(config),
        "healthy_again": traced(config, "--steps", "8"),  # the default, spelled out: a second run of the same seed
        "no_zero_grad": traced(config, "--skip-zero-grad-from", "5"),
        "lr": traced(config, "--lr", "0.05"),
    }


def test_runs_of_the_same_seed_are_equal(runs):
    code, out, _ = diff(str(runs["healthy"]), str(runs["healthy_again"]))
    assert code == 0 and out.startswith("equal: ")
    code, d = diff_json(str(runs["healthy"]), str(runs["healthy_again"]))
    assert code == 0 and d["equal"] is True and d["steps"] == [] and d["first_call_difference"] is None
    assert d["records"]["a"] == d["records"]["b"] > 100


def test_skipped_zero_grad_from_step_5(runs):
    code, d = diff_json(str(runs["healthy"]), str(runs["no_zero_grad"]))
    assert code == 1 and d["equal"] is False
    tensors = d["first_tensor_difference"]
    assert tensors["step"] == 5
    assert [t["name"] for t in tensors["tensors"]] == PARAMS
    assert all("grad" in t["attributes"] and t["records_a"] == t["records_b"] + 1 for t in tensors["tensors"])
    call = d["first_call_difference"]
    assert call["step"] == 5 and call["call"] == 1 and call["thread"] == 0
    assert call["a"]["function"] == "torch.optim.optimizer.Optimizer.zero_grad"
    assert call["a"]["site"] == f"train.py:{ZERO_GRAD_LINE}" and call["a"]["source"] == "optimizer.zero_grad()"
    assert call["b"]["function"] == "torch.nn.modules.container.Sequential.forward"
    assert call["b"]["site"] == f"train.py:{FORWARD_LINE}"
    assert {"function", "site"} <= set(call["fields"])
    assert [s["step"] for s in d["steps"]] == [5, 6, 7, 8]
    for s in d["steps"]:
        assert s["calls_a"] == s["calls_b"] + 1 and s["tensors"] == PARAMS
        assert s["only_a"] == [{"function": "torch.optim.optimizer.Optimizer.zero_grad",
                                "site": f"train.py:{ZERO_GRAD_LINE}", "count": 1}]
        assert s["only_b"] == []
    code, out, _ = diff(str(runs["healthy"]), str(runs["no_zero_grad"]))
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == "runs differ"
    assert lines[1].startswith("first tensor difference: step 5 ")
    assert any(line.startswith("first call difference: step 5, call 1 ") for line in lines)
    assert f"  A: torch.optim.optimizer.Optimizer.zero_grad (pre) at train.py:{ZERO_GRAD_LINE}" in lines
    assert "       optimizer.zero_grad()" in lines  # the original source line
    assert any(line.startswith("  step 5: ") and f"+A zero_grad (train.py:{ZERO_GRAD_LINE}) x1" in line for line in lines)


def test_different_learning_rate(runs):
    code, d = diff_json(str(runs["healthy"]), str(runs["lr"]))
    assert code == 1
    call = d["first_call_difference"]
    assert call["step"] == 0 and call["fields"] == ["kwargs"]
    assert call["a"]["function"] == call["b"]["function"] == "torch.optim.sgd.SGD"
    assert call["a"]["site"] == call["b"]["site"] == f"train.py:{SGD_LINE}"
    assert json.loads(call["a"]["kwargs"]) == {"lr": {"float": 0.1}}
    assert json.loads(call["b"]["kwargs"]) == {"lr": {"float": 0.05}}
    tensors = d["first_tensor_difference"]
    assert tensors["step"] == 1  # the first optimizer step applies the other rate
    assert all(t["attributes"] == ["data"] for t in tensors["tensors"])
    assert [t["name"] for t in tensors["tensors"]] == PARAMS


def test_order_of_the_runs_swaps_the_sides(runs):
    code, d = diff_json(str(runs["no_zero_grad"]), str(runs["healthy"]))
    assert code == 1
    assert d["first_call_difference"]["b"]["function"] == "torch.optim.optimizer.Optimizer.zero_grad"
    assert d["steps"][0]["only_b"][0]["count"] == 1 and d["steps"][0]["only_a"] == []


def test_bad_input_exits_2_with_one_line(runs, tmp_path: Path):
    healthy = str(runs["healthy"])
    for args, message in [
        ([healthy, str(tmp_path / "missing")], "no such run folder"),
        ([healthy, str(tmp_path)], "not a run folder"),
        ([healthy], "give two run folders"),
        ([healthy, "--ranks", "0"], "exactly two ranks"),
        ([healthy, "--ranks", "0,x"], "comma-separated integers"),
        ([healthy, "--ranks", "0,1"], "no rank 0 in the trace"),  # a run without torch.distributed has no ranks
    ]:
        code, out, err = diff(*args)
        assert code == 2 and out == "", args
        assert len(err.splitlines()) == 1 and message in err and err.startswith("tc-rewrite: error: "), err


@pytest.fixture(scope="module")
def ddp_runs(traced) -> dict[str, Path]:
    return {"in_sync": traced(DIVERGE / "ddp.yaml"), "perturbed": traced(DIVERGE / "ddp.yaml", env={"PERTURB": "1"})}


def test_ranks_in_sync_are_equal(ddp_runs):
    code, d = diff_json(str(ddp_runs["in_sync"]), "--ranks", "0,1")
    assert code == 0 and d["equal"], d
    assert [a.split()[:2] + b.split()[:2] for a, b in d["pairs"]] == [["rank", "0", "rank", "1"]]


def test_ranks_out_of_sync(ddp_runs):
    code, d = diff_json(str(ddp_runs["perturbed"]), "--ranks", "0,1")
    assert code == 1
    tensors = d["first_tensor_difference"]
    assert tensors["step"] == 3 and [(t["name"], t["attributes"]) for t in tensors["tensors"]] == [("model.0.weight", ["data"])]
    call = d["first_call_difference"]
    assert call["step"] == 3 and call["b"]["function"] == "torch.autograd.grad_mode.no_grad"
    assert any(x["site"] == f"train.py:{PERTURB_LINE}" and x["function"].endswith("add_")
               for x in d["steps"][0]["only_b"])
    later = [s for s in d["steps"] if s["step"] > 3]
    assert later and all(s["tensors"] == ["model.0.weight"] for s in later)  # the weights never agree again
    code, d = diff_json(str(ddp_runs["perturbed"]), "--ranks", "1,0")
    assert code == 1 and any(x["function"].endswith("add_") for x in d["steps"][0]["only_a"])
    code, d = diff_json(str(ddp_runs["in_sync"]), str(ddp_runs["perturbed"]))  # rank by rank across the two runs
    assert code == 1 and [p[0].split()[:2] for p in d["pairs"]] == [["rank", "0"], ["rank", "1"]]
    assert d["first_tensor_difference"]["process_b"].startswith("rank 1 ")
