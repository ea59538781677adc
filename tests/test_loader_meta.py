"""DataLoader workers carry the step and stage of the moment the main process asked for their batch, on a real run
with two forked workers fetching while the main process trains."""

from __future__ import annotations

import sys

import pytest

from helpers import FIXTURES, run_plain, run_tc
from traincheck_rewrite.trace import read_records


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    fixture = FIXTURES / "dataloader_steps"
    plain = run_plain([sys.executable, "train.py"], cwd=fixture)
    traced = run_tc([str(fixture / "config.yaml")], tmp_path_factory.mktemp("loader"))
    assert plain.returncode == 0 == traced.returncode, traced.stderr
    assert traced.stdout == plain.stdout
    records = list(read_records(traced.run_dir))
    first = min(records, key=lambda r: r["time"])["process_id"]  # the main process starts first
    return first, records


def _pre(records, function):
    return [r for r in records if r.get("function") == function and r["type"] == "function_call (pre)"]


def test_each_worker_record_has_the_meta_of_the_moment_its_batch_was_asked_for(run):
    main, records = run
    # the sampler runs in the main process: torch.tensor(i) as index i is asked for
    asked = {r["args"]["0"]["int"]: r["meta_vars"] for r in _pre(records, "torch.tensor") if r["process_id"] == main}
    fetched = [r for r in _pre(records, "torch.full") if r["process_id"] != main]  # the dataset, in the workers
    assert len(asked) == len(fetched) == 96
    for r in fetched:
        index = int(r["args"]["1"]["float"])
        assert r["meta_vars"]["worker_id"] in (0, 1)
        assert {k: v for k, v in r["meta_vars"].items() if k != "worker_id"} == asked[index], index


def test_batches_asked_for_during_training_are_fetched_in_training(run):
    main, records = run
    fetched = [r for r in _pre(records, "torch.full") if r["process_id"] != main]
    trained = [r for r in fetched if r["meta_vars"]["stage"] == "training"]
    assert len(trained) >= 48  # 12 batches, the first five asked for before the first step
    assert {r["meta_vars"]["step"] for r in trained} == set(range(1, 8))  # four batches ahead: the last asked in step 7
    steps = [r["time"] for r in records if r.get("function") == "torch.optim.sgd.SGD.step" and r["process_id"] == main]
    late = [r for r in fetched if r["time"] > min(steps) and int(r["args"]["1"]["float"]) >= 48]
    assert late and all(r["meta_vars"]["step"] >= 1 and r["meta_vars"]["stage"] == "training" for r in late)
