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


def test_state_records_keep_data_only_where_it_changed(tmp_path: Path):
    records = [state(1, 10, None), state(2, 10, 5), state(3, 11, 5), state(4, 11, None), state(5, 10, 6, name="model.v")]
    write_trace(tmp_path / "run" / "traces", "trace_VAR_7_1.log.zst", records)
    stats = export_traincheck(tmp_path / "run", tmp_path / "out")
    (lines,) = read_export(tmp_path / "out").values()
    assert [r["attributes"].get("data") for r in lines] == [10, None, 11, None, 10]
    assert all("grad" in r["attributes"] and "shape" in r["attributes"] for r in lines)
    assert stats.unchanged_data_dropped == 2


def test_torn_file_is_read_up_to_the_tear(tmp_path: Path):
    compress = zstandard.ZstdCompressor(level=1).compress
    whole = compress(b"".join(orjson.dumps(r) + b"\n" for r in (api(PRE, 1, 1), api(POST, 1, 2))))
    torn = compress(orjson.dumps(api(PRE, 2, 3)) + b"\n" + orjson.dumps(api(POST, 2, 4)) + b"\n")[:-3]
    folder = tmp_path / "run" / "traces"
    folder.mkdir(parents=True)
    (folder / "trace_API_7_1.log.zst").write_bytes(whole + torn)
    stats = export_traincheck(tmp_path / "run", tmp_path / "out")
    assert stats.truncated_files == ["trace_API_7_1.log.zst"]
    assert [r["func_call_id"] for r in read_export(tmp_path / "out")["trace_API_7_1.log"]] == [1, 1]


def test_refuses_a_non_empty_target_and_leaves_nothing_half_written(tmp_path: Path):
    write_trace(tmp_path / "run" / "traces", "trace_API_7_1.log.zst", [api(PRE, 1, 1), api(POST, 1, 2)])
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        export_traincheck(tmp_path / "run", tmp_path / "busy")
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["keep.txt"]
    (tmp_path / "empty").mkdir()
    export_traincheck(tmp_path / "run", tmp_path / "empty")
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["export.json", "trace_API_7_1.log"]
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
    assert len(exported) == len(original) and {r["func_call_id"] for r in exported if "func_call_id" in r} == {
        r["func_call_id"] for r in original if "func_call_id" in r
    }
    # the plain reader reads the export folder too (decompressed TrainCheck layout)
    assert len(list(read_records(out))) == len(original)
    again = subprocess.run([sys.executable, "-m", "traincheck_rewrite", "trace", "export", str(result.run_dir), "--to", str(out)],
                           capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "already exists" in again.stderr
