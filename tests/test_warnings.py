"""Warnings raised inside logged calls, by Python code or by torch's C++ code (which warns with stacklevel 1, naming
the innermost Python frame), keep their count, category, file and line as in the plain run: recorded under
`warnings.catch_warnings(record=True)` and printed once per line under the default filter. On every way a call is
logged: the plain path, the general path (sampling), and calls that only number their tensors (`--invariants`)."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from helpers import api_records, run_plain, run_tc

SCRIPT = """\
import os, sys, traceback, warnings
import torch


def seen(w):
    return f"{w.category.__name__} {os.path.basename(w.filename)}:{w.lineno} {str(w.message)[:30]}"


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(2, 1)

    def forward(self, x):
        warnings.warn("forward warns", UserWarning, stacklevel=2)
        return self.fc(x)


model = Net()
opt = torch.optim.SGD(model.parameters(), lr=0.1)
t = torch.ones(2)
for step in range(4):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            torch.tensor(t)  # torch's C++ code warns, stacklevel 1
        torch.nn.functional.softmax(torch.ones(2, 3))  # torch's Python code warns, stacklevel 3
        model(t.view(1, 2)).sum().backward()
        opt.step()
        opt.zero_grad()
    print(step, [seen(w) for w in caught])
torch.tensor(t)  # the default filter: once per line
torch.tensor(t)
for _ in range(2):
    torch.tensor(t)
try:
    torch.matmul(torch.ones(2, 3), torch.ones(2, 3))
except RuntimeError as exc:
    print([(os.path.basename(f.filename), f.lineno, f.name) for f in traceback.extract_tb(exc.__traceback__)])
"""


def _warning_lines(stderr: str) -> list[str]:
    """The default filter's warning lines, file paths cut to their names (the traced program runs from the run
    folder)."""
    return [re.sub(r"^\S*/", "", line) for line in stderr.splitlines() if "Warning:" in line]


@pytest.mark.parametrize(
    "flags",
    [[], ["--sampling-interval", "2", "--warm-up-steps", "1"], ["--invariants", "INV"]],
    ids=["plain-path", "general-path", "numbered"],
)
def test_warnings_inside_logged_calls_are_those_of_the_plain_run(tmp_path: Path, flags: list[str]):
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text(SCRIPT)
    inv = tmp_path / "inv.json"
    inv.write_text(json.dumps({"text_description": "t", "relation": "DistinctArgumentRelation",
                               "params": [{"param_type": "APIParam", "api_full_name": "torch.nn.functional.linear"}],
                               "precondition": {"x": {"inverted": False, "preconditions": [{"clauses": "Unconditional"}]}}}))  # fmt: skip
    plain = run_plain([sys.executable, "train.py"], cwd=src)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.count("UserWarning train.py:26 To copy construct") == 12  # 3 a step, the program's line
    assert _warning_lines(plain.stderr).count("train.py:33: UserWarning: To copy construct from a tensor, it is "
                                             "recommended to use sourceTensor.detach().clone() or sourceTensor.detach()."
                                             "clone().requires_grad_(True), rather than torch.tensor(sourceTensor).") == 1  # fmt: skip
    args = [str(inv) if f == "INV" else f for f in flags]
    traced = run_tc(["--pyscript", str(src / "train.py"), "--models-to-track", "model", *args], tmp_path / "out", cwd=src)
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout == plain.stdout
    assert _warning_lines(traced.program_stderr) == _warning_lines(plain.stderr)
    logged = {r["function"] for r in api_records(traced.run_dir)}
    assert ("torch.tensor" in logged) == (not flags or flags[0] != "--invariants"), logged
