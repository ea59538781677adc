"""`tc-rewrite trace query` and `trace export --format parquet` on real runs of fixtures/diverge: the views answer
with the same counts as `trace summary`, and one query finds the planted bug."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from helpers import FIXTURES, ROOT, sites
from traincheck_rewrite.trace.summary import summarize

DIVERGE = FIXTURES / "diverge"
NO_ZERO_GRAD_STEPS = """SELECT step FROM calls WHERE stage = 'training' GROUP BY step
HAVING count(*) FILTER (WHERE function LIKE '%zero_grad') = 0 ORDER BY step"""


def tc(*args: str, pre: str = "") -> subprocess.CompletedProcess:
    code = f"{pre}import sys; from traincheck_rewrite.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, "trace", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def query(run: Path, sql: str, *extra: str) -> list[dict]:
    proc = tc("query", str(run), sql, "--json", *extra)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def deep(traced) -> Path:
    return traced(DIVERGE / "deep.yaml")


def test_views_count_what_summary_counts(deep):
    s = summarize(deep)
    (row,) = query(deep, """SELECT
        (SELECT count(*) FROM calls WHERE completed) AS api_calls,
        (SELECT count(*) FROM calls WHERE NOT completed) AS open_calls,
        (SELECT count(*) FROM calls WHERE exception IS NOT NULL) AS exceptions,
        (SELECT count(*) FROM states) AS state_changes,
        (SELECT count(DISTINCT var_name) FROM states) AS variables,
        (SELECT count(DISTINCT process_id) FROM calls) AS processes,
        (SELECT greatest(max(c.step), (SELECT max(step) FROM states)) FROM calls c) AS max_step,
        (SELECT count(*) FROM sites) AS sites""")
    assert row == {"api_calls": s["api_calls"], "open_calls": s["open_calls"], "exceptions": s["exceptions"],
                   "state_changes": s["state_changes"], "variables": s["variables"], "processes": s["processes"],
                   "max_step": s["max_step"], "sites": len(sites(deep))}
    rows = query(deep, "SELECT function, count(*) AS n FROM calls WHERE completed GROUP BY 1")
    assert {r["function"]: r["n"] for r in rows} == s["functions"]


def test_calls_join_sites_and_nest(deep):
    rows = query(deep, """SELECT c.function, c.file, c.line, s.source FROM calls c JOIN sites s ON c.site = s.site
                          WHERE c.function LIKE '%zero_grad' LIMIT 1""")
    assert rows == [{"function": "torch.optim.optimizer.Optimizer.zero_grad", "file": "train.py",
                     "line": next(i for i, l in enumerate((DIVERGE / "train.py").read_text().splitlines(), 1)
                                  if "optimizer.zero_grad()" in l),
                     "source": "optimizer.zero_grad()"}]
    (row,) = query(deep, """SELECT count(*) AS inner_calls, count(*) FILTER (WHERE k.pre_time >= p.pre_time
                            AND k.post_time <= p.post_time AND k.step = p.step) AS inside
                            FROM calls k JOIN calls p ON k.parent_id = p.call_id""")
    assert row["inner_calls"] > 50 and row["inside"] == row["inner_calls"]
    (row,) = query(deep, "SELECT count(*) AS n FROM calls WHERE duration_ns <> post_time - pre_time OR duration_ns < 0")
    assert row["n"] == 0


def test_one_query_finds_the_skipped_zero_grad(traced):
    healthy = traced(DIVERGE / "config.yaml")
    broken = traced(DIVERGE / "config.yaml", "--skip-zero-grad-from", "5")
    assert query(healthy, NO_ZERO_GRAD_STEPS) == []
    assert [r["step"] for r in query(broken, NO_ZERO_GRAD_STEPS)] == [5, 6, 7, 8]


def test_table_output_and_ranks(traced):
    run = traced(DIVERGE / "ddp.yaml")
    proc = tc("query", str(run), "SELECT rank, count(*) AS calls FROM calls GROUP BY 1 ORDER BY 1")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["rank", "calls"] and [l.split()[0] for l in lines[2:4]] == ["0", "1"]
    assert lines[-1] == "(2 rows)"
    assert [r["rank"] for r in query(run, "SELECT DISTINCT rank FROM states", "--ranks", "1")] == [1]


def test_parquet_export_holds_the_same_tables(deep, tmp_path: Path):
    out = tmp_path / "tables"
    proc = tc("export", str(deep), "--format", "parquet", "--to", str(out))
    assert proc.returncode == 0, proc.stderr
    names = sorted(p.name for p in out.iterdir())
    (pid,) = {n.split("_")[1].split(".")[0] for n in names if n.startswith("calls_")}
    assert names == [f"calls_{pid}.parquet", "sites.parquet", f"states_{pid}.parquet"]
    s = summarize(deep)
    con = duckdb.connect()
    assert con.execute(f"SELECT count(*) FROM '{out}/calls_*.parquet' WHERE completed").fetchone()[0] == s["api_calls"]
    assert con.execute(f"SELECT count(*) FROM '{out}/states_*.parquet'").fetchone()[0] == s["state_changes"]
    assert con.execute(f"SELECT count(*) FROM '{out}/sites.parquet'").fetchone()[0] == len(sites(deep))
    again = tc("export", str(deep), "--format", "parquet", "--to", str(out))
    assert again.returncode == 2 and "already exists" in again.stderr


def test_errors_are_one_line(deep):
    for args, message in [
        (("query", str(deep), "SELECT * FROM nope"), "nope does not exist"),
        (("query", str(deep), "SELEKT 1"), "syntax error"),
        (("query", str(deep) + "-missing", "SELECT 1"), "no such run folder"),
    ]:
        proc = tc(*args)
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1 and message in proc.stderr, proc.stderr
    missing = tc("query", str(deep), "SELECT 1", pre="sys_modules = __import__('sys').modules; sys_modules['duckdb'] = None; ")
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr == ("tc-rewrite: error: DuckDB is not installed: pip install 'traincheck-rewrite[query]' "
                              "(or pip install duckdb)\n")
