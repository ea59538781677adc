"""Optimizer steps made by compiled code count as steps: `torch.compile(optimizer.step)` and a compiled training step
(TrainCheck's pytorch-115607 traced 7 steps for 12 such steps), with the graphs dynamo makes unchanged."""

from __future__ import annotations

import collections
import sys

from helpers import FIXTURES, run_plain, run_tc
from traincheck_rewrite.trace import read_records

FIXTURE = FIXTURES / "compiled_adam"


def test_each_compiled_adam_step_is_one_step(tmp_path):
    plain = run_plain([sys.executable, "train.py"], cwd=FIXTURE, timeout=300)
    assert plain.returncode == 0 and "optimizer steps: 8" in plain.stdout, plain.stderr
    traced = run_tc([str(FIXTURE / "config.yaml")], tmp_path, cwd=FIXTURE)
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout == plain.stdout  # the same losses, graphs, graph breaks and recompiles

    records = list(read_records(traced.run_dir))
    assert max(r["meta_vars"]["step"] for r in records) == 8
    steps_of = collections.defaultdict(list)
    for r in records:
        if r["type"] == "function_call (pre)":
            steps_of[r["function"]].append(r["meta_vars"]["step"])
    # Each iteration prints its loss (`loss.item()`) in its own step; the eager backward and the call to the compiled
    # `optimizer.step` are in the even iterations (steps 1, 3, 5, 7), the compiled training step logs nothing inside.
    assert steps_of["torch.Tensor.item"][:8] == list(range(1, 9)), steps_of["torch.Tensor.item"]
    assert steps_of["torch._tensor.Tensor.backward"] == [1, 3, 5, 7]
    assert steps_of["torch.optim.adam.Adam.step"] == [1, 3, 5, 7]

    # Each step changed every parameter once, and the change is recorded in that step, compiled training steps included.
    last, changed_in = {}, collections.defaultdict(list)
    for r in sorted((r for r in records if r["type"] == "state_change"), key=lambda r: r["time"]):
        data, before = r["attributes"]["data"], last.get(r["var_name"])
        last[r["var_name"]] = data
        if r["var_type"] == "torch.nn.Parameter" and before is not None and data != before:
            changed_in[r["var_name"]].append(r["meta_vars"]["step"])
    assert len(changed_in) == 4 and all(steps == list(range(1, 9)) for steps in changed_in.values()), changed_in
