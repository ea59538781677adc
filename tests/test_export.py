"""`trace export --format traincheck` on trace folders built here by hand, and through the CLI on a real run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import zstandard

from helpers import FIXTURES, ROOT, run_tc
from traincheck_rewrite.trace import read_records
from traincheck_rewrite.trace import export as export_module
from traincheck_rewrite.trace.export import ExportError, export_traincheck

PRE, POST = "function_call (pre)", "function_call (post)"


def write_trace(folder: Path, name: str, records: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(zstandard.ZstdCompressor(level=1).compress(b"".join(orjson.dumps(r) + b"\n" for r in records)))


def api(kind: str, call_id: int, t: int, stage: str = "training", step: int = 1, **extra) -> dict:
    return {"type": kind, "func_call_id": call_id, "function": f"torch.f{call_id}", "time": t, "process_id": 7,
            "thread_id": 1, "meta_vars": {"step": step, "stage": stage}, **extra}


def state(t: int, data: int, grad, name: str = "model.w") -> dict:
    return {"type": "state_change", "var_name": name, "var_type": "torch.nn.Parameter", "mode": "update", "dump_loc": "x",
            "time": t, "process_id": 7, "thread_id": 1, "meta_vars": {"step": 1, "stage": "training"},
            "attributes": {"shape": [2], "data": data, "grad": grad}}


def read_export(folder: Path) -> dict[str, list[dict]]:
    out = {}
    for p in sorted(folder.glob("trace_*")):
        text = p.read_bytes()
        assert text.endswith(b"\n") and b"\n\n" not in text  # the engine aborts on a blank or partial line
        out[p.name] = [json.loads(line) for line in text.splitlines()]
    return out


def test_open_calls_are_dropped_with_a_count_and_complete_calls_inside_them_kept(tmp_path: Path):
    records = [
        api(PRE, 1, 1), api(POST, 1, 2),
        api(PRE, 2, 3),  # outer call, never closed: the process was killed inside it
        api(PRE, 3, 4), api(POST, 3, 5),  # complete call inside it
        api(PRE, 4, 6),  # innermost, never closed
    ]
    write_trace(tmp_path / "run" / "traces", "trace_API_7_1.log.zst", records)
    stats = export_traincheck(tmp_path / "run", tmp_path / "out")
    (lines,) = read_export(tmp_path / "out").values()
    assert [(r["type"], r["func_call_id"]) for r in lines] == [(PRE, 1), (POST, 1), (PRE, 3), (POST, 3)]
    assert stats.dropped_open_calls == 2 and stats.records == 4
    assert json.loads((tmp_path / "out" / "export.json").read_text())["dropped_open_calls"] == 2


def test_post_record_takes_the_stage_of_its_pre_record(tmp_path: Path):
    records = [api(PRE, 1, 1, stage="training"), api(POST, 1, 2, stage="evaluation"),  # model.eval() switches stage
               api(PRE, 2, 3, stage="evaluation"), api(POST, 2, 4, stage="evaluation")]
    write_trace(tmp_path / "run" / "traces", "trace_API_7_1.log.zst", records)
    stats = export_traincheck(tmp_path / "run", tmp_path / "out")
    (lines,) = read_export(tmp_path / "out").values()
    assert [r["meta_vars"]["stage"] for r in lines] == ["training", "training", "evaluation", "evaluation"]
    assert stats.stage_aligned_posts == 1


def test_state_records_keep_data_where_it_changed_and_name_their_identities_as_traincheck_does(tmp_path: Path):
    records = [state(1, 10, None), state(2, 10, 5), state(3, 11, 5), state(4, 11, None), state(5, 10, 6, name="model.v")]
    for i, r in enumerate(records):
        r["attributes"].update(data_id=1 + (r["var_name"] == "model.v"), grad_id=0 if r["attributes"]["grad"] is None else 10 + i)
    write_trace(tmp_path / "run" / "traces", "trace_VAR_7_1.log.zst", records)
    stats = export_traincheck(tmp_path / "run", tmp_path / "out")
    (lines,) = read_export(tmp_path / "out").values()
    assert [r["attributes"].get("data") for r in lines] == [10, None, 11, None, 10]  # export._traincheck_state: why
    assert all("grad" in r["attributes"] and "shape" in r["attributes"] for r in lines)
    assert stats.unchanged_data_dropped == 2
    assert [r["attributes"]["_TRAINCHECK_data_ID"] for r in lines] == [1, 1, 1, 1, 2]
    assert [r["attributes"]["_TRAINCHECK_grad_ID"] for r in lines] == [0, 11, 12, 0, 14]
    assert not any("data_id" in r["attributes"] or "grad_id" in r["attributes"] for r in lines)


def test_torn_file_is_read_up_to_the_tear(tmp_path: Path):
    compress = zstandard.ZstdCompressor(level=1).compress
    whole = compress(b"".join(orjson.dumps(r) + b"\n" for r in (api(PRE, 1, 1), api(POST, 1, 2))))
    torn = compress(orjson.dumps(api(PRE, 2, 3)) + b"\n" + orjson.dumps(api(POST, 2, 4)) + b"\n")[:-3]
    folder = tmp_path / "run" / "traces"
    folder.mkdir(parents=True)
    (folder / "trace_API_7_1.log.zst").write_bytes(whole + torn)
    stats = export_traincheck(tmp_path / "run", tmp_path / "out")
    assert stats.truncated_files == ["trace_API_7_1.log.zst"]
    assert [r["func_call_id"] for r in read_export(tmp_path / "out")["trace_API_all.log"]] == [1, 1]


def test_refuses_a_non_empty_target_and_leaves_nothing_half_written(tmp_path: Path):
    write_trace(tmp_path / "run" / "traces", "trace_API_7_1.log.zst", [api(PRE, 1, 1), api(POST, 1, 2)])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        export_traincheck(tmp_path / "run", tmp_path / "busy")
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    export_traincheck(tmp_path / "run", tmp_path / "empty")
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["export.json", "trace_API_all.log"]
    assert not [p for p in tmp_path.iterdir() if ".partial" in p.name]


def test_cli_exports_a_real_run_whose_records_read_back_identically(tmp_path: Path):
    result = run_tc([str(FIXTURES / "mlp" / "config.yaml")], tmp_path / "runs")
    assert result.returncode == 0, result.stderr
    out = tmp_path / "export"
    proc = subprocess.run([sys.executable, "-m", "traincheck_rewrite", "trace", "export", str(result.run_dir), "--to", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and f"to {out}" in proc.stderr, proc.stderr
    exported = [r for lines in read_export(out).values() for r in lines]
    original = list(read_records(result.run_dir))
    pid = original[0]["process_id"]
    assert len(exported) == len(original) and {r["func_call_id"] for r in exported if "func_call_id" in r} == {
        r["func_call_id"] - pid * 10**9 for r in original if "func_call_id" in r  # process 0: the only one
    }
    # the plain reader reads the export folder too (decompressed TrainCheck layout)
    assert len(list(read_records(out))) == len(original)
    again = subprocess.run([sys.executable, "-m", "traincheck_rewrite", "trace", "export", str(result.run_dir), "--to", str(out)],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already exists" in again.stderr


def _envelope(data_id: int) -> dict:
    return {"torch.FloatTensor": {"dtype": "torch.float32", "shape": [2], "nbytes": 8}, "data_id": data_id}


def test_identities_are_ranks_and_orders_of_appearance_never_os_ids_or_addresses(tmp_path: Path):
    def call(pid: int, tid: int, n: int, t: int, rank=None, **pre) -> list[dict]:
        meta = {"step": 1, "stage": "training", **({"rank": rank} if rank is not None else {})}
        base = {"func_call_id": pid * 10**9 + n, "function": "torch.Tensor.normal_", "process_id": pid, "thread_id": tid,
                "meta_vars": meta, "is_bound_method": True, "obj_id": 140000 + n % 2}
        return [{**base, "type": PRE, "time": t, "parent_id": None, "args": {}, "kwargs": {}, **pre},
                {**base, "type": POST, "time": t + 1, "return_values": {"NoneType": None}}]

    traces = tmp_path / "run" / "traces"
    # two single processes: the one that started first is 0, whatever its pid; threads in order of appearance
    write_trace(traces, "trace_API_900_5.log.zst", call(900, 5, 1, 10) + call(900, 5, 2, 20))
    write_trace(traces, "trace_API_900_77.log.zst", call(900, 77, 3, 15))
    write_trace(traces, "trace_API_500_9.log.zst", call(500, 9, 1, 12, args={"0": _envelope(0)}))
    export_traincheck(tmp_path / "run", tmp_path / "out")
    files = read_export(tmp_path / "out")
    assert sorted(files) == ["trace_API_all.log"]
    records = files["trace_API_all.log"]
    assert [(r["process_id"], r["thread_id"], r["func_call_id"]) for r in records if r["type"] == PRE] == [
        (0, 0, 1), (0, 1, 3), (0, 0, 2), (1, 0, 10**9 + 1)]  # one step: process by process, each in time order
    assert {r["function"] for r in records} == {"torch._C.TensorBase.normal_"}

    # ranks win over the order of appearance
    ranked = tmp_path / "ranked" / "traces"
    write_trace(ranked, "trace_API_300_1.log.zst", call(300, 1, 1, 10, rank=1))
    write_trace(ranked, "trace_API_400_1.log.zst", call(400, 1, 1, 20, rank=0))
    export_traincheck(tmp_path / "ranked", tmp_path / "ranked_out")
    files = read_export(tmp_path / "ranked_out")
    assert [(r["process_id"], r["meta_vars"]["rank"]) for r in files["trace_API_all.log"] if r["type"] == PRE] == [(0, 0), (1, 1)]


def test_the_ranks_api_records_are_in_one_file_step_by_step(tmp_path: Path):
    """TrainCheck's engine takes a function's calls in the order of the files it reads and prunes repeats past the
    first ten: rank 1's first calls must come among the first, next to rank 0's, not after all of rank 0's. And its
    Lead/Cover relations leave out a function with more than four records in a row: a step's records stay together
    by process, so the ranks' calls of a collective made at the same time do not stand in a row."""
    traces = tmp_path / "run" / "traces"
    for pid, rank in ((300, 0), (400, 1)):
        calls = []
        for step in range(1, 21):
            t, n = (50, 100)[rank] * step + rank, pid * 10**9 + step  # rank 0 twice as fast: its step 2 ends first
            meta = {"step": step, "stage": "training", "rank": rank}
            calls += [api(PRE, n, t, process_id=pid, parent_id=None, meta_vars=meta, args={}, kwargs={}),
                      api(POST, n, t + (2, 98)[rank], process_id=pid, meta_vars=meta, return_values={"NoneType": None})]
        write_trace(traces, f"trace_API_{pid}_1.log.zst", calls)
    export_traincheck(tmp_path / "run", tmp_path / "out")
    records = read_export(tmp_path / "out")["trace_API_all.log"]
    assert [(r["meta_vars"]["step"], r["process_id"], r["type"]) for r in records][:6] == [
        (1, 0, PRE), (1, 0, POST), (1, 1, PRE), (1, 1, POST), (2, 0, PRE), (2, 0, POST)]


def test_a_tensor_keeps_one_data_id_and_two_tensors_alike_get_two(tmp_path: Path):
    # normal_ on one tensor twice, then on another tensor alike: TrainCheck's DistinctArgumentRelation compares
    # whole argument envelopes, so only a data id tells the two cases apart
    calls = []
    for n, data_id in enumerate((0, 0, 2), 1):
        calls += [api(PRE, n, 2 * n, args={"0": _envelope(data_id)}, kwargs={"std": {"float": 0.02}}),
                  api(POST, n, 2 * n + 1, return_values=[_envelope(data_id), {"dict": {"w": _envelope(1), "lr": {"float": 0.1}}}])]
    write_trace(tmp_path / "run" / "traces", "trace_API_7_1.log.zst", calls)
    write_trace(tmp_path / "run" / "traces", "trace_VAR_7_1.log.zst", [
        {**state(1, 10, None), "attributes": {"dtype": "torch.float32", "numel": 6, "data": 10, "grad": None}}])
    export_traincheck(tmp_path / "run", tmp_path / "out")
    files = read_export(tmp_path / "out")
    pres = [r for r in files["trace_API_all.log"] if r["type"] == PRE]
    ids = [r["args"]["0"]["torch.FloatTensor"]["_TRAINCHECK_data_ID"] for r in pres]
    assert ids == [0, 0, 2] and all('"data_id"' not in json.dumps(r) for r in files["trace_API_all.log"])
    assert pres[0]["args"]["0"] == pres[1]["args"]["0"] != pres[2]["args"]["0"]
    post = files["trace_API_all.log"][1]["return_values"]
    assert post[0]["torch.FloatTensor"]["_TRAINCHECK_data_ID"] == 0
    assert post[1] == {"dict": {"_TRAINCHECK_w_ID": 1, "lr": 0.1}}  # as TrainCheck's attribute dump of a dict
    (var,) = files["trace_VAR_0_0.log"]
    assert var["attributes"]["nbytes"] == 24 and var["attributes"]["itemsize"] == 4


def test_two_runs_of_one_program_export_the_same_records_but_for_times(tmp_path: Path):
    exported = []
    for name in ("a", "b"):
        result = run_tc([str(FIXTURES / "mlp" / "config.yaml")], tmp_path / name)
        assert result.returncode == 0, result.stderr
        plain = sorted(result.run_dir.glob("trace_*.log"))  # written into the run folder when the program ended
        exported.append([{k: v for k, v in r.items() if k not in ("time", "obj_id")}  # obj_id: id(self), for grouping
                         for p in plain for r in map(json.loads, p.read_text().splitlines())
                         if "type" in r])  # not the live export's progress and end marks
    assert exported[0] == exported[1]
    names = {r.get("function") for r in exported[0]}
    assert "torch._C.TensorBase.item" in names and not any(str(n).startswith("torch.Tensor.") for n in names)


def test_containers_are_written_as_traincheck_writes_them(tmp_path: Path):
    group = {"dict": {"lr": {"float": 0.1}, "nesterov": {"bool": False}, "params": {"list": [_envelope(3)]}}}
    args = {"0": {"list": [{"int": 1}, {"tuple": [{"str": "a"}, {"NoneType": None}]}]}, "1": group,
            "2": {"tuple": [_envelope(4)]}, "3": {"dict": {"k": {"int": 2}}}}
    write_trace(tmp_path / "run" / "traces", "trace_API_7_1.log.zst", [api(PRE, 1, 1, args=args, kwargs={}), api(POST, 1, 2)])
    export_traincheck(tmp_path / "run", tmp_path / "out")
    pre = read_export(tmp_path / "out")["trace_API_all.log"][0]
    assert pre["args"] == {"0": {"list": [1, ["a", None]]}, "1": {"dict": {"lr": 0.1, "nesterov": False}},
                           "2": {"tuple": {}}, "3": {"dict": {"k": 2}}}  # fmt: skip


def test_a_wrapper_calling_the_function_it_wraps_is_one_call(tmp_path: Path):
    def call(kind, n, t, parent=None, function="torch.optim.sgd.SGD.step", obj=5):
        return api(kind, n, t, parent_id=parent, obj_id=obj, **{"function": function})

    records = [call(PRE, 1, 1), call(PRE, 2, 2, parent=1), call(PRE, 3, 3, parent=2),  # step > step > step
               call(PRE, 4, 4, parent=3, function="torch.optim.sgd._single_tensor_sgd", obj=None),
               call(POST, 4, 5, function="torch.optim.sgd._single_tensor_sgd", obj=None),
               call(POST, 3, 6), call(POST, 2, 7), call(POST, 1, 8),
               call(PRE, 5, 9, obj=6), call(PRE, 6, 10, parent=5, obj=7), call(POST, 6, 11, obj=7), call(POST, 5, 12, obj=6)]
    write_trace(tmp_path / "run" / "traces", "trace_API_7_1.log.zst", records)
    stats = export_traincheck(tmp_path / "run", tmp_path / "out")
    (lines,) = read_export(tmp_path / "out").values()
    assert [(r["func_call_id"], r["type"] == PRE) for r in lines] == [
        (1, True), (4, True), (4, False), (1, False), (5, True), (6, True), (6, False), (5, False)]  # other objects: kept
    assert lines[1]["parent_id"] == 1 and stats.repeated_calls_merged == 2


def _both_ways(monkeypatch, run: Path, tmp_path: Path) -> tuple[dict, dict]:
    """The export with state records in a second process and all in one, as (files, export.json without source)."""
    out = {}
    for name, threshold in (("parallel", 0), ("one", 1 << 60)):
        monkeypatch.setattr(export_module, "PARALLEL_STATE_BYTES", threshold)
        export_traincheck(run, tmp_path / name)
        files = {p.name: p.read_bytes() for p in sorted((tmp_path / name).glob("trace_*"))}
        out[name] = (files, {k: v for k, v in json.loads((tmp_path / name / "export.json").read_text()).items() if k != "source"})
    return out["parallel"], out["one"]


def test_state_records_exported_beside_the_api_records_give_the_same_files(monkeypatch, tmp_path: Path):
    """Large runs export their state records in a second process: the files and counts must be those of one process,
    for a real run and for a job of several processes, one of them killed before its first flush (spill files only)."""
    result = run_tc([str(FIXTURES / "mlp" / "config.yaml")], tmp_path / "runs")
    assert result.returncode == 0, result.stderr
    parallel, one = _both_ways(monkeypatch, result.run_dir, tmp_path / "real")
    assert parallel == one and any(name.startswith("trace_VAR_") for name in one[0]), sorted(one[0])

    traces = tmp_path / "job" / "traces"
    for pid, t in ((900, 10), (500, 20)):
        calls = [api(PRE, pid * 10**9 + 1, t, process_id=pid, parent_id=None, args={"0": _envelope(3)}, kwargs={}),
                 api(POST, pid * 10**9 + 1, t + 1, process_id=pid, return_values={"NoneType": None})]
        write_trace(traces, f"trace_API_{pid}_1.log.zst", calls)
        write_trace(traces, f"trace_VAR_{pid}_1.log.zst", [{**state(t + 2, 5, None), "process_id": pid}, {**state(t + 3, 5, 6), "process_id": pid}])
    spilled = [{**state(30, 1, None), "process_id": 700}, {**state(31, 2, None), "process_id": 700}]
    (traces / "spill_VAR_700_1.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in spilled) + b"\0" * 64)
    parallel, one = _both_ways(monkeypatch, tmp_path / "job", tmp_path / "job_out")
    assert parallel == one
    assert sorted(one[0]) == ["trace_API_all.log", "trace_VAR_0_0.log", "trace_VAR_1_0.log", "trace_VAR_2_0.log"]
    assert one[1]["records"] == 4 + 4 + 2 and one[1]["unchanged_data_dropped"] == 2
