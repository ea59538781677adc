"""SQL over a job's trace (`trace query`) and Parquet tables (`trace export --format parquet`), on DuckDB (the
optional `query` extra).

The trace is first flattened, streaming, into three tables of JSON Lines, one file per process (pre and post records
of a call joined into one row while the thread's call stack is open), which DuckDB then reads itself:

- calls: one row per logged call: call_id, parent_id, function, site (site number, or "<module>:<line>:<col>" in a
  rewritten library), file, line, step, stage (at the call), pre_time, post_time, duration_ns (ns; NULL when the
  call never returned), completed, exception, exception_msg, is_bound_method, args, kwargs, return_values (JSON),
  process_id, thread_id, rank, run (the run folder)
- states: one row per state record: time, var_name, var_type, mode, dump_loc, data, grad (JSON), attributes (JSON),
  step, stage, process_id, thread_id, rank, run
- sites: one row per wrapped call site of sites.json: site, file, line, col, end_line, end_col, source, run
- violations (`trace query` only): one row per call of each violation `tc-rewrite --check` found (a violation
  naming no call: one row), from check/violations.jsonl: time, step, stage, rank, thread (as the violation names
  them), relation, invariant, function, file, line, source (the program's line of the call), variable (a variable
  the violation names), process_id, thread_id (of the process and thread found in the trace), run; empty when no
  run was checked
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import orjson

from ..outputs import OutputPathError, check_folder_target
from .job import Job, Process, RunFolder
from .reader import ReadStats
from .verdict import place

PRE = "function_call (pre)"
EXCEPTION = "function_call (post) (exception)"
STATE = "state_change"

COLUMNS = {
    "calls": {
        "call_id": "BIGINT", "parent_id": "BIGINT", "function": "VARCHAR", "site": "VARCHAR", "file": "VARCHAR",
        "line": "INTEGER", "step": "BIGINT", "stage": "VARCHAR", "pre_time": "BIGINT", "post_time": "BIGINT",
        "duration_ns": "BIGINT", "completed": "BOOLEAN", "exception": "VARCHAR", "exception_msg": "VARCHAR",
        "is_bound_method": "BOOLEAN", "args": "JSON", "kwargs": "JSON", "return_values": "JSON",
        "process_id": "BIGINT", "thread_id": "UBIGINT", "rank": "INTEGER", "run": "VARCHAR",
    },
    "states": {
        "time": "BIGINT", "var_name": "VARCHAR", "var_type": "VARCHAR", "mode": "VARCHAR", "dump_loc": "VARCHAR",
        "data": "JSON", "grad": "JSON", "attributes": "JSON", "step": "BIGINT", "stage": "VARCHAR",
        "process_id": "BIGINT", "thread_id": "UBIGINT", "rank": "INTEGER", "run": "VARCHAR",
    },
    "sites": {
        "site": "VARCHAR", "file": "VARCHAR", "line": "INTEGER", "col": "INTEGER", "end_line": "INTEGER",
        "end_col": "INTEGER", "source": "VARCHAR", "run": "VARCHAR",
    },
    "violations": {
        "time": "BIGINT", "step": "BIGINT", "stage": "VARCHAR", "rank": "INTEGER", "thread": "INTEGER",
        "relation": "VARCHAR", "invariant": "VARCHAR", "function": "VARCHAR", "call_step": "BIGINT", "file": "VARCHAR", "line": "INTEGER",
        "source": "VARCHAR", "variable": "VARCHAR", "process_id": "BIGINT", "thread_id": "UBIGINT", "run": "VARCHAR",
    },
}
ONE_FILE = ("sites", "violations")  # tables of one file, <table>.jsonl; the others have one per process


class QueryError(Exception):
    """A one-line reason the query could not run."""


def duckdb_module():
    try:
        import duckdb
    except ImportError:
        raise QueryError("DuckDB is not installed: pip install 'traincheck-rewrite[query]' (or pip install duckdb)") from None
    return duckdb


def _meta(record: dict) -> dict:
    meta = record.get("meta_vars")
    return meta if isinstance(meta, dict) else {}


def _int(value):
    return value if type(value) is int else None


class _Lines:
    """A JSON Lines file written in batches."""

    def __init__(self, path: Path):
        self.f, self.buf = open(path, "wb"), []

    def add(self, row: dict) -> None:
        self.buf.append(orjson.dumps(row, option=orjson.OPT_NON_STR_KEYS))
        if len(self.buf) >= 4096:
            self.flush()

    def flush(self) -> None:
        if self.buf:
            self.f.write(b"\n".join(self.buf) + b"\n")
            self.buf = []

    def close(self) -> None:
        self.flush()
        self.f.close()


def _site_columns(run: RunFolder, site) -> tuple:
    if isinstance(site, str):
        path, _, rest = site.partition(":")
        line = rest.split(":")[0]
        return site, path, int(line) if line.isdigit() else None
    entry = run.sites.get(str(site)) if site is not None else None
    if isinstance(entry, dict):
        return str(site), entry.get("file"), _int(entry.get("line"))
    return None if site is None else str(site), None, None


def _process_tables(p: Process, folder: Path, stats: ReadStats) -> None:
    run = str(p.run.root)
    calls, states = _Lines(folder / f"calls_{p.pid}.jsonl"), _Lines(folder / f"states_{p.pid}.jsonl")
    try:
        for tid in p.threads():
            open_calls: dict = {}  # func_call_id -> row, while the call is open
            for source in p.sources_of("API", tid):
                for r in source.records(stats):
                    call = r.get("func_call_id")
                    if r.get("type") == PRE:
                        meta = _meta(r)
                        site, file, line = _site_columns(p.run, r.get("site"))
                        open_calls[call] = {
                            "call_id": _int(call), "parent_id": _int(r.get("parent_id")), "function": r.get("function"),
                            "site": site, "file": file, "line": line, "step": _int(meta.get("step")),
                            "stage": meta.get("stage"), "pre_time": _int(r.get("time")), "post_time": None,
                            "duration_ns": None, "completed": False, "exception": None, "exception_msg": None,
                            "is_bound_method": r.get("is_bound_method"), "args": r.get("args"),
                            "kwargs": r.get("kwargs"), "return_values": None, "process_id": p.pid, "thread_id": tid,
                            "rank": p.rank, "run": run,
                        }
                        continue
                    row = open_calls.pop(call, None)
                    if row is None:
                        continue
                    t = _int(r.get("time"))
                    row["post_time"] = t
                    row["duration_ns"] = t - row["pre_time"] if t is not None and row["pre_time"] is not None else None
                    row["completed"] = True
                    if r.get("type") == EXCEPTION:
                        row["exception"], row["exception_msg"] = r.get("exception"), r.get("exception_msg")
                    else:
                        row["return_values"] = r.get("return_values")
                    calls.add(row)
            for row in open_calls.values():  # the process was killed inside these calls
                calls.add(row)
            for source in p.sources_of("VAR", tid):
                for r in source.records(stats):
                    meta = _meta(r)
                    attributes = r.get("attributes") if isinstance(r.get("attributes"), dict) else {}
                    states.add({
                        "time": _int(r.get("time")), "var_name": r.get("var_name"), "var_type": r.get("var_type"),
                        "mode": r.get("mode"), "dump_loc": r.get("dump_loc"), "data": attributes.get("data"),
                        "grad": attributes.get("grad"), "attributes": attributes, "step": _int(meta.get("step")),
                        "stage": meta.get("stage"), "process_id": p.pid, "thread_id": tid, "rank": p.rank, "run": run,
                    })
    finally:
        calls.close()
        states.close()


def write_tables(job: Job, folder: Path, ranks: list[int] | None = None) -> ReadStats:
    """The three tables as JSON Lines in `folder`: calls_<pid>.jsonl, states_<pid>.jsonl, sites.jsonl."""
    stats = ReadStats()
    for p in job.select(ranks):
        _process_tables(p, folder, stats)
    sites = _Lines(folder / "sites.jsonl")
    try:
        for run in job.runs:
            for site, e in run.sites.items():
                if isinstance(e, dict):
                    sites.add({"site": site, "file": e.get("file"), "line": _int(e.get("line")), "col": _int(e.get("col")),
                               "end_line": _int(e.get("end_line")), "end_col": _int(e.get("end_col")),
                               "source": e.get("source"), "run": str(run.root)})
    finally:
        sites.close()
    return stats


def write_violations(job: Job, folder: Path, ranks: list[int] | None = None) -> None:
    """The violations table as JSON Lines in `folder`: violations.jsonl (empty when no run folder was checked)."""
    rows = _Lines(folder / "violations.jsonl")
    try:
        for run, v, process, thread in place(job, None if ranks is None else job.select(ranks)):
            where = {"time": _int(v.get("time")), "step": _int(v.get("step")), "stage": v.get("stage"),
                     "rank": _int(v.get("rank")), "thread": _int(v.get("thread")), "relation": v.get("relation"),
                     "invariant": v.get("invariant"), "process_id": process.pid if process else None,
                     "thread_id": process.threads()[thread] if process and thread is not None else None,
                     "run": str(run.root)}
            calls = [c for c in v.get("calls") or [] if isinstance(c, dict)] or [{}]
            for call in calls:
                rows.add({**where, "function": call.get("function"), "call_step": _int(call.get("step")), "file": call.get("file"),
                          "line": _int(call.get("line")), "source": call.get("source"), "variable": call.get("variable")})
    finally:
        rows.close()


def _quote(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _reader(files: list[Path], table: str) -> str:
    columns = "{" + ", ".join(f"'{k}': '{v}'" for k, v in COLUMNS[table].items()) + "}"
    paths = "[" + ", ".join(_quote(f) for f in files) + "]"
    return f"read_json({paths}, format='newline_delimited', columns={columns})"


@contextmanager
def connect(job: Job, ranks: list[int] | None = None):
    """A DuckDB connection with the views calls, states, sites and violations over `job` (flattened into a
    temporary folder, removed on exit), and nothing else: no file but those the views read can be read or written, no
    extension installed or loaded, no database attached, and the configuration locked so that no query can undo
    that."""
    duckdb = duckdb_module()
    folder = Path(tempfile.mkdtemp(prefix="tc-query-"))
    try:
        write_tables(job, folder, ranks)
        write_violations(job, folder, ranks)
        con = duckdb.connect()
        try:
            read: list[Path] = []
            for table in COLUMNS:
                files = sorted(folder.glob(f"{table}_*.jsonl")) if table not in ONE_FILE else [folder / f"{table}.jsonl"]
                if not files:  # no process selected: an empty file still gives the columns
                    files = [folder / f"{table}_none.jsonl"]
                    files[0].touch()
                con.execute(f"CREATE VIEW {table} AS SELECT * FROM {_reader(files, table)}")
                read += files
            con.execute(f"SET allowed_paths = [{', '.join(_quote(f) for f in read)}]")
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            yield con
        finally:
            con.close()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def run_query(job: Job, sql: str, ranks: list[int] | None = None) -> tuple[list[str], list[tuple]]:
    """(column names, rows) of `sql` over the views; a query that reaches further (a file, the network, an
    extension, the settings) is refused with a QueryError."""
    duckdb = duckdb_module()
    with connect(job, ranks) as con:
        try:
            result = con.sql(sql)
            if result is None:  # a statement without a result (CREATE, SET, ...)
                return [], []
            return list(result.columns), result.fetchall()
        except duckdb.Error as exc:
            raise _query_error(duckdb, exc) from None


def _query_error(duckdb, exc: Exception) -> QueryError:
    message = " ".join(str(exc).split())
    if isinstance(exc, duckdb.PermissionException) or "configuration has been locked" in message:
        return QueryError(f"trace query only reads the run's tables calls, states and sites: {message}")
    return QueryError(message)


def format_rows(columns: list[str], rows: list[tuple], limit: int = 200) -> str:
    """An aligned text table of at most `limit` rows (and a line saying how many were left out)."""
    def text(v) -> str:
        return "NULL" if v is None else str(v)

    shown = [[text(v) for v in row] for row in rows[:limit]]
    widths = [min(60, max([len(c)] + [len(r[i]) for r in shown])) for i, c in enumerate(columns)]
    def line(cells):
        return "  ".join((c if len(c) <= w else c[: w - 3] + "...").ljust(w) for c, w in zip(cells, widths)).rstrip()

    out = [line(columns), line(["-" * w for w in widths])] + [line(r) for r in shown]
    if len(rows) > limit:
        out.append(f"... {len(rows) - limit} more rows (--json prints them all)")
    out.append(f"({len(rows)} rows)")
    return "\n".join(out)


def export_parquet(job: Job, to: str | Path, ranks: list[int] | None = None) -> dict:
    """Write the tables as Parquet into the new folder `to`: calls_<pid>.parquet and states_<pid>.parquet per
    process, sites.parquet. The folder appears complete or not at all."""
    duckdb = duckdb_module()
    try:
        target = check_folder_target(to)
    except OutputPathError as exc:
        raise QueryError(str(exc)) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    counts = {"files": 0, "calls": 0, "states": 0, "sites": 0}
    try:
        with tempfile.TemporaryDirectory(prefix="tc-parquet-") as tmp:
            write_tables(job, Path(tmp), ranks)
            con = duckdb.connect()
            try:
                for src in sorted(Path(tmp).glob("*.jsonl")):
                    table = src.name.split("_")[0].split(".")[0]
                    out = staging / (src.stem + ".parquet")
                    con.execute(f"COPY (SELECT * FROM {_reader([src], table)}) TO {_quote(out)} (FORMAT parquet)")
                    counts[table] += con.execute(f"SELECT count(*) FROM {_quote(out)}").fetchone()[0]
                    counts["files"] += 1
            finally:
                con.close()
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return counts
