"""Framework-driven training, with a config of only `pyscript` and `models_to_track`: the HF Trainer, Lightning's
Trainer.fit, an accelerate loop, a GradScaler loop with gradient accumulation, an HF model in a plain loop and a
Lightning Fabric loop.

Each fixture runs plainly and under tc-rewrite (real subprocesses, real traces): the output is the same, `step`
counts the optimizer steps the plain run made, the stages are right, backward / optimizer step / zero_grad are
logged in every step, and the parameter updates are recorded inside the optimizer step's window."""

from __future__ import annotations

import collections
import os
import re
import sys
from pathlib import Path

import pytest

from helpers import FIXTURES, run_plain, run_tc
from traincheck_rewrite.trace import read_records

FRAMEWORKS = FIXTURES / "frameworks"
PRE = "function_call (pre)"
# fixture -> (runs an evaluation, backward calls per optimizer step)
CASES = {
    "hf_trainer": (True, 1),
    "lightning_fit": (True, 1),
    "accelerate_loop": (False, 1),
    "gradscaler_loop": (True, 2),
    "hf_plain_loop": (True, 1),
    "fabric_loop": (False, 1),
}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One rewrite cache for the xdist workers: the first run rewrites the framework's modules, the others load them."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "framework-cache"


def optimizer_step(function: str) -> bool:
    return function.startswith("torch.optim.") and function.endswith(".step") and "lr_scheduler" not in function


def windows(records: list[dict], matches) -> list[tuple[int, int]]:
    """(pre time, post time) of every completed call whose function `matches`."""
    pre = {r["func_call_id"]: r for r in records if r["type"] == PRE and matches(r["function"])}
    return [(pre[r["func_call_id"]]["time"], r["time"]) for r in records
            if r["type"].startswith("function_call (post") and r["func_call_id"] in pre]  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_framework_run_is_complete(name, tmp_path, shared_cache):
    has_eval, backward_per_step = CASES[name]
    script = FRAMEWORKS / f"{name}.py"
    plain = run_plain([sys.executable, str(script)], FRAMEWORKS, timeout=600)
    assert plain.returncode == 0, plain.stderr
    traced = run_tc([str(FRAMEWORKS / f"{name}.yaml")], tmp_path, cwd=FRAMEWORKS, timeout=900,
                    env_extra={"TC_REWRITE_CACHE_DIR": str(shared_cache)})  # fmt: skip
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout.splitlines()[: len(plain.stdout.splitlines())] == plain.stdout.splitlines()
    steps = int(re.search(r"optimizer steps: (\d+)", plain.stdout).group(1))
    assert steps > 0

    records = list(read_records(traced.run_dir))
    assert max(r["meta_vars"]["step"] for r in records) == steps
    stages = collections.Counter(r["meta_vars"]["stage"] for r in records)
    assert stages["training"] > 0
    assert (stages["evaluation"] > 0) == has_eval, stages

    per_step: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for r in records:
        if r["type"] != PRE or r["meta_vars"]["stage"] != "training":
            continue
        f = r["function"]
        kind = "step" if optimizer_step(f) else "backward" if f.endswith(".backward") else "zero_grad" if f.endswith(".zero_grad") else None
        if kind:
            per_step[kind][r["meta_vars"]["step"]] += 1
    every = range(1, steps + 1)
    assert [per_step["step"][s] for s in every] == [1] * steps, per_step["step"]
    assert [per_step["backward"][s] for s in every] == [backward_per_step] * steps, per_step["backward"]
    assert all(per_step["zero_grad"][s] >= 1 for s in every), per_step["zero_grad"]

    # Every change of a tracked parameter's data lies inside an optimizer step's call window, and every step made one.
    step_windows = windows(records, optimizer_step)
    assert len(step_windows) == steps
    last: dict[str, object] = {}
    inside = collections.Counter()
    for r in sorted((r for r in records if r["type"] == "state_change"), key=lambda r: r["time"]):
        data, before = r["attributes"]["data"], last.get(r["var_name"])
        last[r["var_name"]] = data
        if r["var_type"] != "torch.nn.Parameter" or before is None or data == before:
            continue
        window = next((w for w in step_windows if w[0] < r["time"] < w[1]), None)
        assert window is not None, (r["var_name"], r["dump_loc"], r["meta_vars"])
        inside[window] += 1
    assert len(inside) == steps


def test_a_first_run_says_it_rewrites_library_modules_when_someone_watches(tmp_path):
    """torch's GradScaler module is rewritten on `import torch`: one line as a cold run starts, one as it ends; none
    once cached, and none in the program's logged output unless asked for (tc-rewrite asks when on a terminal)."""
    script = tmp_path / "t.py"
    script.write_text("import torch\nprint('ok')\n")
    cache = tmp_path / "cache"
    watched = {"TC_REWRITE_CACHE_DIR": str(cache), "TC_REWRITE_PROGRESS": "1"}
    cold = run_tc(["--pyscript", str(script)], tmp_path / "cold", env_extra=watched)
    assert cold.returncode == 0, cold.stderr
    lines = [line for line in cold.program_stderr.splitlines() if line.startswith("traincheck_rewrite:")]
    assert len(lines) == 2 and "rewriting library modules" in lines[0] and "torch.amp.grad_scaler" in lines[0], lines
    assert re.match(r"traincheck_rewrite: rewrote \d+ library modules in [\d.]+ s \(cached in ", lines[1]), lines
    warm = run_tc(["--pyscript", str(script)], tmp_path / "warm", env_extra=watched)
    assert "traincheck_rewrite:" not in warm.program_stderr
    unwatched = run_tc(["--pyscript", str(script)], tmp_path / "unwatched", env_extra={"TC_REWRITE_CACHE_DIR": str(tmp_path / "c2")})
    assert "traincheck_rewrite:" not in unwatched.program_stderr
    assert (unwatched.run_dir / "program_output.txt").read_text() == "ok\n"
