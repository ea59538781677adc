"""scripts/fpstudy.py on a reduced study through TrainCheck's real engine: invariants inferred from one healthy
program, checked on a healthy program with another network and optimizer. Its false alarms are counted against the
invariants checked, and those about an API the program never calls are told apart.
Skipped only when TrainCheck's virtualenv (scripts/traincheck_venv.sh) cannot be made."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from helpers import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import bugbench  # noqa: E402
import fpstudy  # noqa: E402


@pytest.mark.slow
def test_false_alarms_on_another_healthy_program_are_counted_per_invariant(tmp_path: Path, monkeypatch):
    try:
        engine = bugbench.engine_bin()
    except RuntimeError as exc:
        pytest.skip(str(exc))
    monkeypatch.setattr(fpstudy, "INFER_FROM", ["mnist"])
    monkeypatch.setattr(fpstudy, "CHECK_ON", {"resnet": fpstudy.CHECK_ON["resnet"]})
    result = fpstudy.study(bugbench.Ours(), engine, tmp_path)
    assert result.error is None, result.error
    (resnet,) = result.checked
    assert result.records == bugbench.trace_records(tmp_path / "mnist_traces") > 0
    assert 0 < len(resnet.failed) <= resnet.triggered <= result.invariants
    assert resnet.rate == len(resnet.failed) / result.invariants
    called = fpstudy.functions_called(tmp_path / "resnet_traces")
    absent = {v["absent"] for v in resnet.failed if v["absent"]}
    assert "torch.optim.adadelta.Adadelta.step" in absent and not absent & called  # an SGD program
    assert "torch.optim.sgd.SGD.step" in called
    line = next(line for line in fpstudy.table(result).splitlines() if line.startswith("| resnet |"))
    assert f"| {resnet.triggered} | {len(resnet.failed)} | {resnet.about_absent} | {resnet.rate:.1%} |" in line
