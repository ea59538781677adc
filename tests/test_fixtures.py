"""Every fixture run plainly and under `tc-rewrite CONFIG`: same output, same exit code, and a trace that holds the
calls the script makes, each pointing at the original line it was made on."""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from helpers import FIXTURES, api_records, run_plain, run_tc, sites

# fixture -> expected exit code
FIXTURE_EXITS = {
    "mlp": 0,
    "cnn": 0,
    "transformer": 0,
    "exception_step3": 1,
    "multifile": 0,
    "args": 0,
    "threads": 0,
    "dataloader": 0,
}


def _script_args(fixture: Path) -> list[str]:
    return [str(a) for a in yaml.safe_load((fixture / "config.yaml").read_text()).get("args", [])]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each fixture run once plainly and once traced (shared by the tests of this module)."""
    out = {}
    for name in FIXTURE_EXITS:
        fixture = FIXTURES / name
        plain = run_plain([sys.executable, "train.py", *_script_args(fixture)], cwd=fixture)
        traced = run_tc([str(fixture / "config.yaml")], tmp_path_factory.mktemp(name), cwd=fixture)
        out[name] = (plain, traced)
    return out


@pytest.mark.parametrize("name", list(FIXTURE_EXITS))
def test_same_output_and_exit_code(runs, name):
    plain, traced = runs[name]
    assert plain.returncode == FIXTURE_EXITS[name], plain.stderr
    assert traced.returncode == plain.returncode, traced.stderr
    assert traced.stdout == plain.stdout
    assert traced.run_dir is not None
    program_output = (traced.run_dir / "program_output.txt").read_text()
    for line in plain.stdout.splitlines():
        assert line in program_output


@pytest.mark.parametrize("name", list(FIXTURE_EXITS))
def test_every_call_is_closed_exactly_once(runs, name):
    records = api_records(runs[name][1].run_dir)
    kinds = Counter()
    for r in records:
        kinds[(r["func_call_id"], r["type"] == "function_call (pre)")] += 1
    ids = {cid for cid, _ in kinds}
    for cid in ids:
        assert kinds[(cid, True)] == 1 and kinds[(cid, False)] == 1, cid
    by_thread: dict = {}
    for r in records:
        key = (r["process_id"], r["thread_id"])
        assert r["time"] > by_thread.get(key, -1)  # strictly increasing per thread, in file order
        by_thread[key] = r["time"]


REQUIRED = {
    "mlp": [
        ("torch.nn.functional.cross_entropy", "F.cross_entropy(logits, y)"),
        ("torch.optim.optimizer.Optimizer.zero_grad", "optimizer.zero_grad()"),
        ("torch.optim.sgd.SGD.step", "optimizer.step()"),
        ("torch._tensor.Tensor.backward", "loss.backward()"),
        ("torch.nn.modules.container.Sequential.forward", "model(x)"),
        ("torch.nn.modules.linear.Linear", "nn.Linear(4, 16)"),
        ("torch.nn.modules.container.Sequential", "nn.Sequential("),
    ],
    "cnn": [
        ("torch.nn.functional.max_pool2d", "F.max_pool2d("),
        ("torch.optim.adam.Adam.step", "optimizer.step()"),
        ("torch.nn.modules.module.Module.__init__", "super().__init__()"),
        ("torch.nn.modules.conv.Conv2d", "nn.Conv2d(1, 8, 3, padding=1)"),
        ("torch.serialization.save", "torch.save("),
        ("torch.nn.modules.module.Module.eval", "model.eval()"),
    ],
    "transformer": [
        ("torch.nn.utils.clip_grad.clip_grad_norm_", "torch.nn.utils.clip_grad_norm_("),
        ("torch.optim.adam.Adam.step", "optimizer.step()"),  # AdamW inherits it
    ],
    "multifile": [
        ("torch.nn.modules.linear.Linear", "nn.Linear(3, hidden)"),  # in model_def.py
        ("torch.optim.sgd.SGD", "torch.optim.SGD(model.parameters(), lr=lr)"),
        ("torch.randn", "torch.randn(n, 3)"),  # in utils/data.py
    ],
}


@pytest.mark.parametrize("name", list(REQUIRED))
def test_calls_are_logged_with_their_original_site(runs, name):
    run_dir = runs[name][1].run_dir
    table = sites(run_dir)
    seen: dict[str, set[str]] = {}
    for r in api_records(run_dir):
        if r["type"] == "function_call (pre)" and type(r["site"]) is int:  # a string names a site in torch.nn.modules
            seen.setdefault(r["function"], set()).add(str(r["site"]))
    for function, text in REQUIRED[name]:
        assert function in seen, f"{function} not logged; logged: {sorted(seen)}"
        texts = [table[s]["source"] for s in seen[function]]
        assert any(t.startswith(text) for t in texts), (function, texts)
    for site in table.values():  # every site's text is on its line of the original file
        original = (FIXTURES / name / site["file"]).read_text().splitlines()[site["line"] - 1]
        assert original[site["col"] :].startswith(site["source"].splitlines()[0])


def test_pre_and_post_records_follow_the_schema(runs):
    records = api_records(runs["mlp"][1].run_dir)
    pre = next(r for r in records if r["function"] == "torch.optim.optimizer.Optimizer.zero_grad")
    assert pre["type"] == "function_call (pre)"
    assert pre["is_bound_method"] is True and isinstance(pre["obj_id"], int)
    assert list(pre["args"]) == ["0"] and "torch.optim.sgd.SGD" in pre["args"]["0"]
    assert pre["meta_vars"] == {"step": 1, "stage": "training"} and pre["proxy_obj_names"] == []
    call = next(r for r in records if r["function"] == "torch.nn.functional.cross_entropy" and "args" in r)
    tensor = call["args"]["0"]["torch.FloatTensor"]
    assert tensor["shape"] == [64, 3] and tensor["dtype"] == "torch.float32" and tensor["requires_grad"] is True
    post = next(r for r in records if r["type"] == "function_call (post)" and r["func_call_id"] == call["func_call_id"])
    assert post["return_values"]["torch.FloatTensor"]["shape"] == []
    # the calls the default libraries make (torch.nn.modules, torch.nn.utils, torch.nn.init) are nested in the
    # program's; the program's are not
    by_id = {r["func_call_id"]: r for r in records if r["type"] == "function_call (pre)"}
    inner = [r for r in by_id.values() if r["parent_id"] is not None]
    default_libraries = ("torch/nn/modules/", "torch/nn/utils/", "torch/nn/init.py")
    assert inner and all(isinstance(r["site"], str) and r["site"].startswith(default_libraries) for r in inner)
    assert {by_id[r["parent_id"]]["function"] for r in inner if r["function"] == "torch._C._nn.linear"} == {
        "torch.nn.modules.linear.Linear.forward"
    }
    assert all(r["parent_id"] is None for r in by_id.values() if isinstance(r["site"], int))
    # closures torch makes inside its functions are no APIs (named_parameters' lambda, run lazily by the optimizer)
    assert not [r["function"] for r in by_id.values() if "<locals>" in r["function"]]


def test_exception_record_closes_the_failing_call(runs):
    records = api_records(runs["exception_step3"][1].run_dir)
    assert not any("exception" in r for r in records)  # the ValueError is raised by user code
    plain, traced = runs["exception_step3"]
    assert "ValueError: boom at step 3" in traced.program_stderr
    assert traced.program_stderr.count("File ") == plain.stderr.count("File ")


def test_threads_and_worker_processes_write_their_own_files(runs):
    threads_dir = runs["threads"][1].run_dir
    names = sorted(p.name for p in (threads_dir / "traces").glob("trace_API_*"))
    assert len(names) == 2 and all(re.match(r"trace_API_\d+_\d+\.log\.zst$", n) for n in names)
    side = {r["thread_id"] for r in api_records(threads_dir) if r["function"] == "torch.matmul"}
    main = {r["thread_id"] for r in api_records(threads_dir) if r["function"].endswith(".step")}
    assert len(side) == 1 and len(main) == 1 and side != main
    loader_records = api_records(runs["dataloader"][1].run_dir)
    pids = Counter(r["process_id"] for r in loader_records if r["function"] == "torch.randn")
    assert len(pids) == 2 and sum(pids.values()) == 2 * 32  # pre+post, 32 items over two workers


def test_run_json_records_the_run(runs):
    plain, traced = runs["args"]
    info = json.loads((traced.run_dir / "run.json").read_text())
    assert info["exit_code"] == 0 and info["status"] == "finished"
    assert info["command"][-4:] == ["--epochs", "2", "--lr", "0.05"]
    assert info["records"]["api"] > 0 and info["records"]["truncated_files"] == 0
    assert "environ" not in json.dumps(info).lower()
    assert "epochs=2 lr=0.05" in traced.stdout
    diff = (traced.run_dir / "instrumentation.diff").read_text()
    assert diff.startswith("--- a/train.py\n+++ b/train.py\n")


def test_copy_all_files_instruments_every_module(runs):
    run_dir = runs["multifile"][1].run_dir
    for rel in ("train.py", "model_def.py", "utils/data.py", "data/settings.json"):
        assert (run_dir / rel).is_file(), rel
    assert "_tc_(" in (run_dir / "model_def.py").read_text()
    assert (run_dir / "data/settings.json").read_text() == (FIXTURES / "multifile/data/settings.json").read_text()
    files = {s["file"] for s in sites(run_dir).values()}
    assert {"train.py", "model_def.py", "utils/data.py"} <= files
