"""`tc-rewrite`: collect a trace (the default command), read run folders (`trace ...`), or manage the cache of
rewritten library code (`cache ...`).

The first argument picks the command: `trace` or `cache` starts that group; anything else is collection.
"""

from __future__ import annotations

import contextlib
import gc
import json
import shlex
import sys
from pathlib import Path

import click

from . import __version__

COLLECT_HELP = """Instrument a PyTorch training script, run it and write its trace into a new run folder.

\b
  tc-rewrite CONFIG.yml [FLAGS] [-- SCRIPT ARGS...]
  tc-rewrite --use-config --config CONFIG.yml [FLAGS]
  tc-rewrite --pyscript train.py [FLAGS] [-- SCRIPT ARGS...]

Config keys are the flag names with '_' for '-'. Flags given on the command line override the config file;
arguments after '--' are appended to the config's 'args'. As in traincheck-collect, --modules-to-instr,
--models-to-track and --invariants take several values (-t torch transformers), and --output-dir DIR is the run
folder itself (new or empty). Reading run folders: 'tc-rewrite trace --help'; the
cache of rewritten libraries: 'tc-rewrite cache --help'.
"""


class _OneLineError(Exception):
    pass


def _opt(*decls, **kw):
    kw.setdefault("default", None)
    return click.option(*decls, **kw)


@click.command(help=COLLECT_HELP, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.argument("config_file", required=False, metavar="[CONFIG.yml]")
@_opt("--use-config", is_flag=True, help="Read --config (TrainCheck's form).")
@_opt("--config", "config_opt", metavar="FILE", help="Config file (with --use-config).")
@_opt("-p", "--pyscript", metavar="FILE", help="The training script to instrument.")
@_opt("-s", "--shscript", metavar="FILE", help="A shell launcher (torchrun ...) that runs the pyscript.")
@_opt("-t", "--modules-to-instr", multiple=True, metavar="MODULE", help="Modules whose APIs are logged [torch].")
@_opt("--models-to-track", multiple=True, metavar="NAME", help="Variables holding models to track.")
@_opt("--model-tracker-style", type=click.Choice(["proxy", "subclass", "sampler"]), help="[proxy]")
@_opt("-a", "--copy-all-files", is_flag=True, help="Copy and instrument the script's whole folder.")
@_opt("--output-dir", metavar="DIR", help="The run folder (new or empty) [traincheck_run_<script>_..._<time>].")
@_opt("--only-instr", is_flag=True, help="Write the run folder without running (does not import torch).")
@_opt("-i", "--invariants", multiple=True, metavar="FILE", help="TrainCheck invariant files: record only what they need.")
@_opt("--sampling-interval", type=int, help="Record every N-th step after the warm-up [1; 10 with --invariants].")
@_opt("--warm-up-steps", type=int, help="Record the first N steps in full [1; 10 with --invariants].")
@_opt("--tensor-dump-format", type=click.Choice(["hash", "stats", "full"]), help="[hash]")
@_opt("--API-dump-stack-trace", "API_dump_stack_trace", is_flag=True, help="Record a stack trace per call.")
@_opt("--use-full-instr", is_flag=True, help="Accepted for TrainCheck compatibility.")
@_opt("-d", "--debug-mode", is_flag=True, help="Verbose tool output.")
@_opt("--instr-descriptors", is_flag=True, help="TrainCheck's; tensor methods are always logged.")
@_opt("--profiling", is_flag=True, help="TrainCheck's; accepted, not run under py-spy.")
@_opt("--disable-scan-proxy-in-args", is_flag=True, help="TrainCheck's; accepted, proxy_obj_names kept.")
@_opt("--no-auto-var-instr", is_flag=True, help="TrainCheck's; accepted, models stay tracked.")
@_opt("--use-torch-compile", is_flag=True, help="TrainCheck's; accepted, torch.compile needs no switch.")
@_opt("--rewrite-libraries", multiple=True, metavar="MODULE", help="Library modules whose inner calls are logged [torch.nn.modules, torch.nn.utils, torch.nn.init].")
@_opt("--no-rewrite-libraries", is_flag=True, help="Log no calls made inside libraries (beside the frameworks').")
@_opt("--rewrite-frameworks/--no-rewrite-frameworks", help="Log what training frameworks call for the program [on].")
@_opt("--log-import-time-calls", is_flag=True, help="Also log calls made while rewritten libraries are imported.")
@_opt("--track-inner-updates", is_flag=True, help="Record each tracked tensor's change at the in-place update inside a library call that made it.")
@_opt("--plain-traces/--no-plain-traces", help="Also write the plain traces TrainCheck's engine reads into the run folder [on].")
@_opt("--check", is_flag=True, help="Check the invariants while the program runs, with TrainCheck's online checker.")
@_opt("--checker", metavar="PATH", help="TrainCheck's virtualenv (or its traincheck-onlinecheck) [from PATH].")
@_opt("--stop-on-violation", is_flag=True, help="With --check: end the program at the first violation.")
@_opt("--meta-var", "meta_var", multiple=True, metavar="KEY=VALUE", help="A static meta variable (repeatable).")
@_opt("--summary", is_flag=True, help="Print the trace summary after the run.")
@click.version_option(__version__, prog_name="tc-rewrite")
def collect_command(config_file, use_config, config_opt, summary, meta_var, no_rewrite_libraries, stop_on_violation, **flags):
    from .config import ConfigError, load_config

    if config_file and config_opt:
        raise _OneLineError("give the config file either as an argument or with --config, not both")
    if use_config and not config_opt:
        raise _OneLineError("--use-config needs --config FILE")
    config_path = config_file or config_opt
    overrides = {}
    for key, value in flags.items():
        if value is None or value == ():
            continue
        overrides[key] = list(value) if isinstance(value, tuple) else value
    if no_rewrite_libraries:
        if "rewrite_libraries" in overrides:
            raise _OneLineError("give either --rewrite-libraries or --no-rewrite-libraries, not both")
        overrides["rewrite_libraries"] = []
    if stop_on_violation:
        overrides.update(check=True, on_violation="stop")
    if meta_var:
        overrides["meta_vars"] = dict(_key_value(item) for item in meta_var)
    script_args = click.get_current_context().meta.get("script_args")
    if script_args:
        overrides["args"] = list(script_args)
    if config_path is None and "pyscript" not in overrides:
        raise _OneLineError("no config file and no --pyscript; see 'tc-rewrite --help'")
    try:
        config = load_config(Path(config_path) if config_path else None, overrides)
    except ConfigError as exc:
        raise _OneLineError(str(exc)) from None
    for note in config.notes:
        click.echo(f"tc-rewrite: note: {note}", err=True)
    from .run import collect

    sys.exit(collect(config, summary=bool(summary)))


def _key_value(item: str) -> tuple[str, object]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise _OneLineError(f"--meta-var {item!r}: expected KEY=VALUE")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def trace_group():
    """Read run folders."""


@trace_group.command("summary")
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of the table.")
def trace_summary(runs, as_json):
    """Counts of calls, functions, state changes, processes, ranks, steps and stages of RUN (several run folders:
    one job, one folder per node), after the verdict of a run checked with --check."""
    from .trace.summary import format_summary, summarize

    with _trace_errors():
        data = summarize(_folders(runs))
    click.echo(json.dumps(data, sort_keys=True) if as_json else format_summary(data))
    _note_missing_plain_traces(runs)


def _note_missing_plain_traces(runs) -> None:
    """A run whose tc-rewrite was stopped before completing the plain traces: say how to make them (TrainCheck's
    engine fails on a folder without them, and may stop reading a thread's file at a call left open)."""
    from .trace.export import plain_traces_missing

    for run in runs:
        if plain_traces_missing(run):
            click.echo(f"tc-rewrite: note: {run} has no complete plain traces for TrainCheck's engine (tc-rewrite was "
                       f"stopped before completing them, or is still running): 'tc-rewrite trace export {shlex.quote(run)} "
                       "--in-place' writes them", err=True)


@trace_group.command("export")
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.option("--to", "to", metavar="PATH", help="traincheck, parquet: a new (or empty) folder; chrome: a new file (.json or .json.gz).")
@click.option("--in-place", is_flag=True, help="traincheck: the plain traces into RUN itself, as tc-rewrite writes them when the program ends.")
@click.option("--force", is_flag=True, help="chrome: replace an existing file (never one in a run folder).")
@click.option("--format", "fmt", type=click.Choice(["traincheck", "chrome", "parquet"]), default="traincheck", show_default=True)
@click.option("--ranks", metavar="A,B,...", help="chrome, parquet: only these ranks.")
@click.option("--steps", metavar="A-B", help="chrome: only calls, state changes and violations of steps A to B (inclusive).")
def trace_export(runs, to, in_place, force, fmt, ranks, steps):
    """Write the trace of RUN (several run folders: one job, one folder per node) as a folder TrainCheck's engine
    reads as it is (traincheck-infer -f DIR), a timeline for Perfetto / chrome://tracing / vizviewer (chrome), or
    Parquet tables (parquet; needs the query extra). Nothing existing is written over but a file named with --force,
    and nothing of a run folder's own records ever."""
    if steps is not None and fmt != "chrome":
        raise _OneLineError("--steps applies to --format chrome only")
    if ranks is not None and fmt == "traincheck":
        raise _OneLineError("--ranks applies to --format chrome and parquet only")
    if force and fmt != "chrome":
        raise _OneLineError("--force applies to --format chrome only: a folder target must be new or empty")
    if in_place:
        if to is not None or fmt != "traincheck" or len(runs) != 1:
            raise _OneLineError("--in-place takes one run folder, no --to, and --format traincheck")
        with _trace_errors():
            from .trace.export import export_in_place

            stats = export_in_place(_folders(runs))
        click.echo(f"tc-rewrite: wrote {stats.records} records in {stats.files} plain trace files into {runs[0]}", err=True)
        return
    if to is None:
        raise _OneLineError("give --to PATH (or --in-place for the plain traces in the run folder itself)")
    with _trace_errors():
        if fmt == "chrome":
            from .trace.chrome import export_chrome
            from .trace.job import open_job

            stats = export_chrome(open_job(runs), to, ranks=_ranks(ranks), steps=_steps(steps), force=force)
            click.echo(f"tc-rewrite: wrote {stats.slices} call slices, {stats.steps} step slices and {stats.instants} "
                       f"instant events of {stats.processes} processes ({stats.threads} threads) to {to}", err=True)
            if stats.violations:
                click.echo(f"tc-rewrite: and {stats.violations} violations of the check (category violation)", err=True)
        elif fmt == "parquet":
            from .trace.job import open_job
            from .trace.query import export_parquet

            counts = export_parquet(open_job(runs), to, ranks=_ranks(ranks))
            click.echo(f"tc-rewrite: wrote {counts['calls']} calls, {counts['states']} states and {counts['sites']} "
                       f"sites in {counts['files']} Parquet files to {to}", err=True)
        else:
            from .trace.export import export_traincheck

            stats = export_traincheck(_folders(runs), to)
            click.echo(f"tc-rewrite: exported {stats.records} records in {stats.files} files to {to}", err=True)
            if stats.dropped_open_calls:
                click.echo(f"tc-rewrite: dropped {stats.dropped_open_calls} calls left open by a killed process", err=True)
            if stats.truncated_files:
                click.echo(f"tc-rewrite: {len(stats.truncated_files)} trace files ended torn; read up to the tear", err=True)


@trace_group.command("diff")
@click.argument("runs", nargs=-1, required=True, metavar="RUN_A RUN_B | RUN... --ranks A,B")
@click.option("--ranks", metavar="A,B", help="Compare two ranks of one job (its run folders) instead of two runs.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of the report.")
def trace_diff(runs, ranks, as_json):
    """Where two runs first differ: the first step whose tracked tensors differ, the first differing call (with both
    call sites), then differences per step. Exit code 0 when equal, 1 when different, 2 on bad input."""
    from .trace.diff import diff_job, format_diff
    from .trace.job import open_job

    with _trace_errors():
        if ranks is not None:
            pair = _ranks(ranks)
            if len(pair) != 2:
                raise _OneLineError(f"--ranks {ranks}: give exactly two ranks, as in --ranks 0,1")
            job = open_job(runs)
            side_a, side_b = job.select(pair[:1]), job.select(pair[1:])
        elif len(runs) != 2:
            raise _OneLineError(f"give two run folders (got {len(runs)}), or one job's folders with --ranks A,B")
        else:
            side_a, side_b = open_job(runs[:1]), open_job(runs[1:])
        result = diff_job(side_a, side_b)
    click.echo(json.dumps(result, sort_keys=True) if as_json else format_diff(result))
    sys.exit(0 if result["equal"] else 1)


@trace_group.command("query")
@click.argument("runs", nargs=-1, required=True, metavar="RUN...")
@click.argument("sql")
@click.option("--ranks", metavar="A,B,...", help="Only these ranks' calls, states and violations.")
@click.option("--json", "as_json", is_flag=True, help="The rows as a JSON list of objects.")
def trace_query(runs, sql, ranks, as_json):
    """Run SQL on DuckDB over the views calls, states, sites and violations of RUN (docs/trace-tools.md lists their
    columns), e.g. "SELECT function, count(*) FROM calls GROUP BY 1 ORDER BY 2 DESC". Needs the query extra."""
    from .trace.job import open_job
    from .trace.query import duckdb_module, format_rows, run_query

    with _trace_errors():
        duckdb_module()  # its absence is the error to report, before any other
        columns, rows = run_query(open_job(runs), sql, ranks=_ranks(ranks))
    if as_json:
        click.echo(json.dumps([dict(zip(columns, row)) for row in rows], default=str))
    else:
        click.echo(format_rows(columns, rows))


def _steps(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    first, sep, last = text.partition("-")
    try:
        span = (int(first), int(last) if sep else int(first))
    except ValueError:
        raise _OneLineError(f"--steps {text}: expected A-B (or one step), as in 10-20") from None
    if span[0] > span[1]:
        raise _OneLineError(f"--steps {text}: the first step is after the last")
    return span


def _ranks(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise _OneLineError(f"--ranks {text}: expected comma-separated integers, as in 0,1") from None


def _folders(runs) -> Path | list[Path]:
    """One run folder, or several checked to be one job."""
    from .trace.job import check_folder, open_job

    if len(runs) == 1:
        return check_folder(runs[0])
    open_job(runs)  # refuses folders of different jobs
    return [Path(r) for r in runs]


@contextlib.contextmanager
def _trace_errors():
    """The trace tools' own errors (bad folders, other jobs, SQL, an existing target) as one-line CLI errors."""
    from .outputs import OutputPathError
    from .trace.chrome import ChromeExportError
    from .trace.export import ExportError
    from .trace.job import JobError
    from .trace.query import QueryError

    try:
        yield
    except (JobError, ChromeExportError, ExportError, QueryError, OutputPathError) as exc:
        raise _OneLineError(str(exc)) from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cache_group():
    """The cache of rewritten library code (rewrite_libraries): $TC_REWRITE_CACHE_DIR, else
    $XDG_CACHE_HOME/traincheck_rewrite, else ~/.cache/traincheck_rewrite."""


@cache_group.command("info")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
def cache_info(as_json):
    """Where the cache is, how many entries it holds, their size, and how many are damaged."""
    from .runtime import codecache

    data = codecache.info()
    if as_json:
        click.echo(json.dumps(data, sort_keys=True))
        return
    click.echo(f"location  {data['location']}")
    click.echo(f"entries   {data['entries']}")
    click.echo(f"size      {data['bytes'] / 1024:.1f} KiB")
    click.echo(f"damaged   {data['damaged']} (ignored and rebuilt when used)")


@cache_group.command("clear")
def cache_clear():
    """Remove every entry (the next traced run rewrites the libraries again)."""
    from .runtime import codecache

    removed = codecache.clear()
    click.echo(f"removed {removed} files from {codecache.cache_dir()}")


_GROUPS = {"trace": trace_group, "cache": cache_group}


def main(argv: list[str] | None = None) -> None:
    # Every command parses trace records into dicts, none in a cycle (the live export while the program runs: every
    # record it copies): at the default threshold the cyclic collector ran every few hundred records and walked all
    # that were kept, again and again (two fifths of the live export's CPU time). This tool's process only: the
    # program's own collector is left as it is.
    gc.set_threshold(50_000, 20, 100)
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _GROUPS:
        command, argv, prog = _GROUPS[argv[0]], argv[1:], f"tc-rewrite {argv[0]}"
        meta = {}
    else:
        command, prog = collect_command, "tc-rewrite"
        meta = {}
        if "--" in argv:
            i = argv.index("--")
            argv, meta = argv[:i], {"script_args": argv[i + 1 :]}
        argv = _spread_variadic(argv)
    try:
        with command.make_context(prog, argv) as ctx:
            ctx.meta.update(meta)
            command.invoke(ctx)
    except _OneLineError as exc:
        _die(str(exc))
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        _die("aborted", 130)
    except click.UsageError as exc:
        _die(" ".join(exc.format_message().split()))
    except click.ClickException as exc:
        _die(" ".join(exc.format_message().split()), exc.exit_code)


_VARIADIC = {"-t", "--modules-to-instr", "--models-to-track", "-i", "--invariants", "--rewrite-libraries"}


def _spread_variadic(argv: list[str]) -> list[str]:
    """`--models-to-track a b` (argparse's nargs='*', as traincheck-collect takes it) as `--models-to-track a
    --models-to-track b`: the values run up to the next word that starts with '-'; a flag with none is left out."""
    out: list[str] = []
    flag = None
    for word in argv:
        if word.startswith("-") and word != "-":
            flag = word if word in _VARIADIC else None
            if flag is None:
                out.append(word)
            continue
        if flag is not None:
            out.append(flag)
        out.append(word)
    return out


def _die(message: str, code: int = 2) -> None:
    click.echo(f"tc-rewrite: error: {message}", err=True)
    sys.exit(code)
