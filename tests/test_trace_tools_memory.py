"""The trace tools stream: on a generated trace of two million records, `trace diff`, `trace export --format chrome`
and `trace query` finish with a peak RSS under a fixed limit (a trace loaded whole would take gigabytes: a record
is about 1 KB as a Python dict)."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import zstandard

from helpers import ROOT

STEPS = 40_000  # 50 records a step: 2,000,000 records
LIMIT_MB = 150  # peak RSS of one tool process; measured 62-63 MB for diff and chrome export at 0.1M and 1M
# records alike (query: 116-152 MB, DuckDB included)
PID, TID = 4242, 77
PRE, POST = "function_call (pre)", "function_call (post)"
TENSOR = {"torch.FloatTensor": {"dtype": "torch.float32", "shape": [32, 4], "device": "cpu", "requires_grad": False,
                                "is_leaf": True, "ndim": 2, "numel": 128, "itemsize": 4, "nbytes": 512, "is_cpu": True}}


class Writer:
    """Records into a zstd trace file as frames of about 1 MiB of JSON, as the runtime writes them."""

    def __init__(self, path: Path):
        self.f, self.buf, self.size = open(path, "wb"), [], 0
        self.zstd = zstandard.ZstdCompressor(level=1)

    def add(self, record: dict) -> None:
        line = orjson.dumps(record)
        self.buf.append(line)
        self.size += len(line) + 1
        if self.size > 1 << 20:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.f.write(self.zstd.compress(b"\n".join(self.buf) + b"\n"))
            self.buf, self.size = [], 0

    def close(self) -> None:
        self.flush()
        self.f.close()


def generate(run: Path) -> int:
    """A one-thread run: per step 18 calls (two nested levels) and 14 state records."""
    (run / "traces").mkdir(parents=True)
    (run / "sites.json").write_text(json.dumps({str(i): {"file": "train.py", "line": i, "col": 0, "end_line": i,
                                                         "end_col": 9, "source": f"call_{i}()"} for i in range(1, 8)}))
    api, var = Writer(run / "traces" / f"trace_API_{PID}_{TID}.log.zst"), Writer(run / "traces" / f"trace_VAR_{PID}_{TID}.log.zst")
    t, call_id, records = 1_000_000, PID * 10**9, 0

    def rec(kind, step, **fields):
        nonlocal t, records
        t += 1000
        records += 1
        return {"type": kind, "time": t, "process_id": PID, "thread_id": TID,
                "meta_vars": {"step": step, "stage": "training"}, **fields}

    def call(step, function, site, parent=None, inner=()):
        nonlocal call_id
        call_id += 1
        me = call_id
        api.add(rec(PRE, step, func_call_id=me, function=function, is_bound_method=False, obj_id=None, parent_id=parent,
                    site=site, args={"0": TENSOR, "1": {"int": step}}, kwargs={}, proxy_obj_names=[]))
        for child in inner:
            call(step, child, site, parent=me)
        api.add(rec(POST, step, func_call_id=me, function=function, parent_id=parent, return_values=TENSOR))

    for step in range(1, STEPS + 1):
        call(step, "torch.optim.optimizer.Optimizer.zero_grad", 1)
        call(step, "torch.nn.modules.module.Module.__call__", 2, inner=["torch.nn.functional.linear"] * 3 + ["torch.relu"])
        call(step, "torch.nn.functional.cross_entropy", 3)
        call(step, "torch._tensor.Tensor.backward", 4)
        for n in range(7):
            var.add(rec("state_change", step, var_name=f"model.{n}.weight", var_type="torch.nn.Parameter", mode="update",
                        dump_loc="backward", attributes={"shape": [32, 4], "data": step * 7 + n, "grad": step + n}))
        call(step, "torch.optim.sgd.SGD.step", 5, inner=["torch.Tensor.add_"] * 7)
        for n in range(7):
            var.add(rec("state_change", step, var_name=f"model.{n}.weight", var_type="torch.nn.Parameter", mode="update",
                        dump_loc="step", attributes={"shape": [32, 4], "data": step * 7 + n + 1, "grad": step + n}))
        call(step, "torch.Tensor.detach", 6)
        call(step, "torch.Tensor.item", 7)
    api.close()
    var.close()
    (run / "run.json").write_text(json.dumps({"status": "finished", "exit_code": 0, "started": "2026-01-01T00:00:00"}))
    return records


# Started from a small launcher: Linux carries a forked child's resident set from before its exec into its peak
# (ru_maxrss), so a tool forked straight from a test worker that has imported torch would show the worker's size.
_LAUNCHER = (
    "import os, subprocess, sys\n"
    "proc = subprocess.Popen(sys.argv[2:])\n"
    "_, status, usage = os.wait4(proc.pid, 0)\n"
    "open(sys.argv[1], 'w').write(str(usage.ru_maxrss))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def peak_rss_mb(tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run `tc-rewrite trace ARGS`; its exit code, output and own peak RSS (wait4's rusage of that child alone)."""
    peak = tmp / "peak_kib"
    with open(tmp / "out", "w+b") as out, open(tmp / "err", "w+b") as err:
        proc = subprocess.run([sys.executable, "-c", _LAUNCHER, str(peak), sys.executable, "-m", "traincheck_rewrite",
                               "trace", *args], cwd=ROOT, stdout=out, stderr=err)  # fmt: skip
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(args, proc.returncode, out.read().decode(), err.read().decode())
    return result, int(peak.read_text()) / 1024


@pytest.mark.slow
def test_tools_stream_a_two_million_record_trace(tmp_path: Path):
    run = tmp_path / "big"
    assert generate(run) == STEPS * 50
    other = tmp_path / "big_other"
    os.symlink(run, other)

    proc, peak = peak_rss_mb(tmp_path, "diff", str(run), str(other), "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["records"]["a"] == STEPS * 50, proc.stderr
    assert peak < LIMIT_MB, f"trace diff peaked at {peak:.0f} MB"

    timeline = tmp_path / "big.json.gz"
    proc, peak = peak_rss_mb(tmp_path, "export", str(run), "--format", "chrome", "--to", str(timeline))
    assert proc.returncode == 0, proc.stderr
    assert peak < LIMIT_MB, f"trace export --format chrome peaked at {peak:.0f} MB"
    slices, tail = 0, b""
    with gzip.open(timeline, "rb") as f:  # counted here while streaming: json.load would hold a million events
        for chunk in iter(lambda: f.read(1 << 20), b""):
            slices += (tail + chunk).count(b'"ph":"X","cat":"call"')
            tail = chunk[-20:]  # shorter than the pattern: a match is never counted twice
    assert slices == STEPS * 18

    proc, peak = peak_rss_mb(tmp_path, "query", str(run), "SELECT count(*) AS n FROM calls WHERE completed", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout) == [{"n": STEPS * 18}], proc.stderr
    assert peak < LIMIT_MB * 2, f"trace query peaked at {peak:.0f} MB"  # DuckDB's own buffers on top
