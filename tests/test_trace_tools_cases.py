"""diff, chrome export and job checks on traces built here by hand, for the cases real fixture runs rarely give: a
process killed inside calls, a run that stops early, a rank missing on one side, folders of different jobs."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
import zstandard

from traincheck_rewrite.trace.chrome import export_chrome
from traincheck_rewrite.trace.diff import diff_job, format_diff
from traincheck_rewrite.trace.job import JobError, open_job

PRE, POST = "function_call (pre)", "function_call (post)"
SITES = {"1": {"file": "train.py", "line": 3, "col": 4, "source": "opt.zero_grad()"},
         "2": {"file": "train.py", "line": 4, "col": 4, "source": "model(x)"}}


class Proc:
    """One process's main thread: calls and state records with increasing times."""

    def __init__(self, pid: int, rank: int | None = None, world: int | None = None):
        self.pid, self.api, self.var, self.t, self.n = pid, [], [], 0, 0
        self.meta = {} if rank is None else {"rank": rank, "world_size": world}

    def _rec(self, kind: str, step: int, **fields) -> dict:
        self.t += 10
        return {"type": kind, "time": self.t, "process_id": self.pid, "thread_id": 1,
                "meta_vars": {"step": step, "stage": "training", **self.meta}, **fields}

    def call(self, function: str, step: int, site: int = 2, close: bool = True, inner=()) -> None:
        self.n += 1
        call_id = self.pid * 10**9 + self.n
        self.api.append(self._rec(PRE, step, func_call_id=call_id, function=function, site=site, args={}, kwargs={}))
        for child in inner:
            child(call_id)
        if close:
            self.api.append(self._rec(POST, step, func_call_id=call_id, function=function, return_values={"int": 1}))

    def state(self, var: str, step: int, data: int) -> None:
        self.var.append(self._rec("state_change", step, var_name=var, attributes={"data": data, "grad": None}))

    def training(self, steps, skip_from: int | None = None) -> "Proc":
        for step in steps:
            if skip_from is None or step < skip_from:
                self.call("torch.optim.Optimizer.zero_grad", step, site=1)
            self.call("torch.nn.Module.__call__", step)
            self.state("w", step, step * (2 if skip_from is not None and step >= skip_from else 1))
        return self


def write(run: Path, *procs: Proc) -> Path:
    (run / "traces").mkdir(parents=True)
    (run / "sites.json").write_text(json.dumps(SITES))
    for p in procs:
        for kind, records in (("API", p.api), ("VAR", p.var)):
            if records:
                data = b"".join(orjson.dumps(r) + b"\n" for r in records)
                (run / "traces" / f"trace_{kind}_{p.pid}_1.log.zst").write_bytes(zstandard.ZstdCompressor().compress(data))
    return run


def test_a_run_that_stops_early_differs_in_the_missing_steps(tmp_path: Path):
    a = open_job([write(tmp_path / "a", Proc(10).training(range(1, 6)))])
    b = open_job([write(tmp_path / "b", Proc(20).training(range(1, 4)))])
    d = diff_job(a, b)
    assert not d["equal"]
    assert [(s["step"], s["calls_a"], s["calls_b"], s["tensors"]) for s in d["steps"]] == [(4, 2, 0, ["w"]), (5, 2, 0, ["w"])]
    assert d["first_call_difference"]["step"] == 4 and d["first_call_difference"]["b"] is None
    assert d["first_tensor_difference"]["tensors"] == [{"name": "w", "attributes": ["data"], "records_a": 1, "records_b": 0}]
    assert "(no more records in this step)" in format_diff(d)
    assert diff_job(a, open_job([write(tmp_path / "c", Proc(30).training(range(1, 6)))]))["equal"]


def test_the_first_difference_is_the_earliest_step_whatever_the_rank(tmp_path: Path):
    a = write(tmp_path / "a", Proc(1, 0, 2).training(range(1, 8)), Proc(2, 1, 2).training(range(1, 8)))
    b = write(tmp_path / "b", Proc(3, 0, 2).training(range(1, 8), skip_from=6), Proc(4, 1, 2).training(range(1, 8), skip_from=3))
    d = diff_job(open_job([a]), open_job([b]))
    assert d["pairs"] == [["rank 0 (pid 1)", "rank 0 (pid 3)"], ["rank 1 (pid 2)", "rank 1 (pid 4)"]]
    assert d["first_call_difference"]["step"] == 3 and d["first_call_difference"]["process_b"] == "rank 1 (pid 4)"
    assert d["first_tensor_difference"]["step"] == 3
    assert d["first_call_difference"]["a"]["site"] == "train.py:3" and d["first_call_difference"]["a"]["source"] == "opt.zero_grad()"


def test_a_rank_on_one_side_only_is_reported(tmp_path: Path):
    a = write(tmp_path / "a", Proc(1, 0, 2).training(range(1, 3)), Proc(2, 1, 2).training(range(1, 3)))
    b = write(tmp_path / "b", Proc(3, 0, 2).training(range(1, 3)))
    d = diff_job(open_job([a]), open_job([b]))
    assert not d["equal"] and d["steps"] == []
    assert d["unmatched_processes"] == {"a": ["rank 1 (pid 2)"], "b": []}
    assert format_diff(d).splitlines()[:2] == ["runs differ", "only in A: rank 1 (pid 2)"]


def test_chrome_slices_of_a_process_killed_inside_calls(tmp_path: Path):
    p = Proc(7)
    p.call("torch.outer", 1, close=False,
           inner=[lambda parent: p.call("torch.done", 1), lambda parent: p.call("torch.inner", 1, close=False)])
    run = write(tmp_path / "run", p)
    stats = export_chrome(open_job([run]), tmp_path / "t.json")
    events = json.loads((tmp_path / "t.json").read_text())["traceEvents"]
    slices = {e["name"]: e for e in events if e["ph"] == "X" and e["cat"] == "call"}
    assert stats.slices == 3 and stats.unfinished == 2 and set(slices) == {"torch.outer", "torch.done", "torch.inner"}
    last = p.api[-1]["time"] / 1000  # both open calls end at the thread's last record
    for name in ("torch.outer", "torch.inner"):
        assert slices[name]["args"]["unfinished"] is True
        assert slices[name]["ts"] + slices[name]["dur"] == pytest.approx(last - 10 / 1000)
    assert "unfinished" not in slices["torch.done"]["args"]


def test_folders_are_one_job_only_when_they_agree(tmp_path: Path):
    n0 = write(tmp_path / "n0", Proc(1, 0, 2).training([1]))
    n1 = write(tmp_path / "n1", Proc(1, 1, 2).training([1]))
    job = open_job([n0, n1])
    assert [p.label for p in job.processes] == ["rank 0 (pid 1)", "rank 1 (pid 1)"]
    assert [p.label for p in job.select([1])] == ["rank 1 (pid 1)"]
    with pytest.raises(JobError, match="world sizes \\[2, 4\\] differ"):
        open_job([n0, write(tmp_path / "w4", Proc(2, 1, 4).training([1]))])
    with pytest.raises(JobError, match="rank 0 appears in both"):
        open_job([n0, write(tmp_path / "again", Proc(2, 0, 2).training([1]))])
    other = write(tmp_path / "other", Proc(3, 1, 2).training([1]))
    (other / "sites.json").write_text("{}")
    with pytest.raises(JobError, match="ran different programs"):
        open_job([n0, other])
    with pytest.raises(JobError, match="no rank 5 in the trace \\(ranks: 0, 1\\)"):
        job.select([5])


def test_steps_past_the_cap_are_counted_not_listed(tmp_path: Path, monkeypatch):
    """Runs apart from early on differ in every step: the lowest MAX_STEPS are listed, the others only counted,
    even when a later pair of processes brings lower steps than the ones listed so far."""
    from traincheck_rewrite.trace import diff

    monkeypatch.setattr(diff, "MAX_STEPS", 3)
    a = write(tmp_path / "a", Proc(1, 0, 2).training(range(1, 11)), Proc(2, 1, 2).training(range(1, 11)))
    b = write(tmp_path / "b", Proc(3, 0, 2).training(range(1, 11), skip_from=5),
              Proc(4, 1, 2).training(range(1, 11), skip_from=2))
    d = diff_job(open_job([a]), open_job([b]))
    assert [s["step"] for s in d["steps"]] == [2, 3, 4] and d["differing_steps"] == 9
    assert d["first_call_difference"]["step"] == 2
    text = format_diff(d, top=2).splitlines()
    assert "differences per step (9 steps differ):" in text
    assert text[-1] == "  ... 7 more steps (--json lists the first 3)"
