"""Where dynamo gives a compiled frame up (a graph break inside a loop) and runs it eagerly, it is asked about every
Python frame called from there: the recorder's frames (the logged call's wrapper, or `numbered` for an API no
`--invariants` names) must never reach it, so that it sees what it sees in the plain run, full or selective."""

from __future__ import annotations

import sys
from pathlib import Path

from helpers import FIXTURES, run_plain, run_tc

FIXTURE = FIXTURES / "compiled_eager_frame"
INVARIANT = (
    '{"text_description": "t", "relation": "FunctionLeadRelation", "params": ['
    '{"param_type": "APIParam", "api_full_name": "torch.optim.optimizer.Optimizer.zero_grad"}, '
    '{"param_type": "APIParam", "api_full_name": "torch.optim.sgd.SGD.step"}], "precondition": {}}\n'
)


def test_dynamo_makes_the_plain_runs_graphs_and_frames_in_full_and_selective_runs(tmp_path: Path):
    plain = run_plain([sys.executable, "train.py"], cwd=FIXTURE, timeout=300)
    assert plain.returncode == 0, plain.stderr[-3000:]
    invariants = tmp_path / "inv.json"
    invariants.write_text(INVARIANT)
    full = run_tc(["--pyscript", str(FIXTURE / "train.py")], tmp_path / "full")
    selective = run_tc(["--pyscript", str(FIXTURE / "train.py"), "--invariants", str(invariants)], tmp_path / "selective")
    counts = plain.stdout.splitlines()[-1]
    assert counts.startswith("graphs ")
    for traced in (full, selective):
        assert traced.returncode == 0, traced.stderr[-3000:]
        assert traced.stdout.splitlines()[-1] == counts
        assert "does not know how to trace" not in traced.stderr
    assert "does not know how to trace" not in plain.stderr
