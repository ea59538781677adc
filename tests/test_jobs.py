"""Several run folders as one job: a simulated two-node `torchrun --nnodes=2` job (two tc-rewrite runs on this
machine, one rank each, meeting at a c10d rendezvous on loopback) read by summary, diff, export and query; folders
of different jobs are refused."""

from __future__ import annotations

import gzip
import json
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from helpers import FIXTURES, ROOT, run_tc

DIVERGE = FIXTURES / "diverge"


def tc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "traincheck_rewrite", "trace", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def nodes(tmp_path_factory) -> list[Path]:
    port = str(free_port())
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(
            lambda node: run_tc([str(DIVERGE / "node.yaml")], tmp_path_factory.mktemp(f"node{node}"),
                                env_extra={"NODE_RANK": str(node), "PORT": port}, timeout=600),
            (0, 1)))
    for r in results:
        assert r.returncode == 0 and r.run_dir is not None, r.stderr
    return [r.run_dir for r in results]


@pytest.mark.slow
def test_two_nodes_are_one_job(nodes, tmp_path: Path):
    a, b = map(str, nodes)
    per_node = [json.loads(tc("summary", n, "--json").stdout) for n in (a, b)]
    assert sorted(s["ranks"][0] for s in per_node) == [0, 1] and all(len(s["ranks"]) == 1 for s in per_node)
    proc = tc("summary", a, b, "--json")
    assert proc.returncode == 0, proc.stderr
    job = json.loads(proc.stdout)
    assert job["ranks"] == [0, 1] and job["processes"] == 2 and job["exit_code"] == 0
    assert job["api_calls"] == sum(s["api_calls"] for s in per_node) and job["records"] == sum(s["records"] for s in per_node)
    table = tc("summary", a, b).stdout.splitlines()
    assert next(r for r in table if r.startswith("ranks")).split() == ["ranks", "0-1"]

    diff = tc("diff", a, b, "--ranks", "0,1", "--json")  # the ranks trained in step: equal
    assert diff.returncode == 0, diff.stdout + diff.stderr
    assert json.loads(diff.stdout)["equal"] is True
    one = tc("diff", a, "--ranks", "0,1")  # one node's folder holds one rank
    assert one.returncode == 2 and "no rank" in one.stderr

    rows = json.loads(tc("query", a, b, "SELECT rank, count(*) AS n FROM calls GROUP BY 1 ORDER BY 1", "--json").stdout)
    assert [r["rank"] for r in rows] == [0, 1] and rows[0]["n"] == rows[1]["n"] > 0

    timeline = tmp_path / "job.json.gz"
    assert tc("export", a, b, "--format", "chrome", "--to", str(timeline)).returncode == 0
    events = json.loads(gzip.decompress(timeline.read_bytes()))["traceEvents"]
    assert sorted(e["args"]["name"].split(" (pid")[0] for e in events if e["name"] == "process_name") == ["rank 0", "rank 1"]

    exported = tmp_path / "traincheck"
    assert tc("export", a, b, "--to", str(exported)).returncode == 0
    api = [orjson.loads(line) for line in (exported / "trace_API_all.log").read_bytes().splitlines()]
    assert sorted({r["process_id"] for r in api}) == [0, 1] and len(list(exported.glob("trace_VAR_*.log"))) == 2


@pytest.mark.slow
def test_folders_of_different_jobs_are_refused(nodes, traced, tmp_path: Path):
    a, b = map(str, nodes)
    single = str(traced(DIVERGE / "config.yaml"))  # the same program, not distributed
    other = str(traced(FIXTURES / "mlp" / "config.yaml"))
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)
    for args, message in [
        (("summary", a, other), "ran different programs (sites.json differ): not one job"),
        (("summary", a, single), "has no rank"),
        (("diff", a, str(copy), "--ranks", "0,1"), "appears in both"),
        (("query", a, other, "SELECT 1"), "not one job"),
        (("export", a, other, "--to", str(tmp_path / "x")), "not one job"),
    ]:
        proc = tc(*args)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and message in proc.stderr, (args, proc.stderr)
    assert not (tmp_path / "x").exists()
