"""collect(): make the run folder, write the instrumented sources, run them, stream their output, record the run.

The child runs in the directory `tc-rewrite` was started from, as `python train.py` would; with `copy_all_files`
paths relative to the script's own file (`Path(__file__).parent / "data"`) resolve inside the copied tree.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import __version__
from .config import Config, ConfigError
from .invariants import load_selection
from .rewrite import Bindings, RewriteError, SiteTable
from .runtime import codecache
from .shscript import replace_script_words
from .trace.export import ExportError, export_beside
from .trace.live import LiveExport
from .trace.reader import decompressed_chunks
from .trace.recover import seal

ORIGINALS = "original_sources"  # the rewritten files as they were: what tracebacks and inspect.getsource show
RESERVED = ("run.json", "sites.json", "instrumentation.diff", "program_output.txt", "traces", ORIGINALS)
_SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", ".venv", "venv", ".tox", ".mypy_cache", ".pytest_cache", "node_modules"}
PACKAGE_PARENT = str(Path(__file__).resolve().parent.parent)


class RunError(Exception):
    """A problem with the run set-up; one line."""


def _say(message: str) -> None:
    sys.stderr.write(f"tc-rewrite: {message}\n")
    sys.stderr.flush()


def _distribution_version(module: str) -> str:
    """The version of the distribution providing `module` (its own name first: mapping every installed
    distribution's modules takes longer than rewriting a script)."""
    top = module.split(".")[0]
    try:
        return importlib.metadata.version(top)
    except importlib.metadata.PackageNotFoundError:
        pass
    for dist in importlib.metadata.packages_distributions().get(top, []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def _run_folder(config: Config, versions: dict[str, str]) -> tuple[Path, bool]:
    """The run folder and whether this run created it. With `output_dir`, that folder itself (as TrainCheck does),
    created if missing and refused if it holds anything; else a new folder named like TrainCheck's,
    traincheck_run_<script>_<module>_<version>..._<timestamp>, in the current directory."""
    if config.output_dir is not None:
        folder = Path(config.output_dir)
        created = not folder.exists()
        folder.mkdir(parents=True, exist_ok=True)
        if not created and any(folder.iterdir()):
            raise RunError(f"output_dir: {folder} exists and is not empty; give a new or empty folder")
        return folder, created
    parts = [Path(config.pyscript).stem]
    for module in config.modules_to_instr:
        parts += [module, versions.get(module, "unknown")]
    stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    base = Path(os.getcwd()) / ("traincheck_run_" + "_".join(parts) + "_" + stamp)
    for n in range(1000):
        candidate = base if n == 0 else base.with_name(f"{base.name}_{n}")
        try:
            candidate.mkdir()
            return candidate, True
        except FileExistsError:
            continue
    raise RunError(f"cannot create a new run folder next to {base}")


def _discard(run_dir: Path, created: bool) -> None:
    """Undo a run folder after a set-up error: removed if this run made it, emptied if the user gave it empty."""
    if created:
        shutil.rmtree(run_dir, ignore_errors=True)
        return
    for child in run_dir.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _is_venv(path: Path) -> bool:
    return (path / "pyvenv.cfg").exists()


def _is_run_folder(path: Path) -> bool:
    return path.name.startswith("traincheck_run_") or ((path / "run.json").is_file() and (path / "traces").is_dir())


def _tree_files(root: Path, run_dir: Path) -> list[Path]:
    """Files of `root` to copy: no VCS/venv/cache folders, no run folders, no linked folders, no file links that
    leave the tree."""
    root_resolved = root.resolve()
    run_resolved = run_dir.resolve()
    out: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            p = here / d
            real = p.resolve()
            if d in _SKIP_DIRS or p.is_symlink() or _is_venv(p) or _is_run_folder(p) or real == run_resolved:
                continue
            keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            p = here / f
            if p.is_symlink() and not p.resolve().is_relative_to(root_resolved):
                continue
            if not p.is_file():
                continue
            out.append(p)
    return out


def _plan_files(config: Config, run_dir: Path) -> list[tuple[Path, Path]]:
    script = Path(config.pyscript)
    if not config.copy_all_files:
        return [(script, run_dir / script.name)]
    root = script.parent
    pairs = [(p, run_dir / p.relative_to(root)) for p in _tree_files(root, run_dir)]
    for src, dst in pairs:
        top = dst.relative_to(run_dir).parts[0]
        if top in RESERVED:
            raise RunError(f"copy_all_files: {src} would overwrite the run folder's own '{top}'; rename it")
    return pairs


def instrument_files(config: Config, run_dir: Path) -> tuple[SiteTable, list[dict]]:
    """Copy and rewrite the sources into `run_dir`; write instrumentation.diff and sites.json."""
    sites = SiteTable()
    bindings = Bindings()
    script = Path(config.pyscript).resolve()
    root = script.parent
    report: list[dict] = []
    diffs: list[str] = []
    for src, dst in _plan_files(config, run_dir):
        dst.parent.mkdir(parents=True, exist_ok=True)
        rel = src.resolve().relative_to(root).as_posix() if src.resolve().is_relative_to(root) else src.name
        if src.suffix != ".py":
            _copy(src, dst)
            continue
        original = src.read_bytes()
        try:
            before = len(sites.sites)
            rewritten = _rewrite_file(original, rel, config, sites, bindings)
        except RewriteError as exc:
            if src.resolve() == script:
                raise
            _say(f"note: {exc}; copied unchanged")
            _copy(src, dst)
            report.append({"file": rel, "wrapped_calls": 0, "error": str(exc)})
            continue
        dst.write_bytes(rewritten)
        _copy_mode(src, dst)
        kept = run_dir / ORIGINALS / rel
        kept.parent.mkdir(parents=True, exist_ok=True)
        _copy(src, kept)
        report.append({"file": rel, "wrapped_calls": len(sites.sites) - before})
        diffs.extend(_diff(original, rewritten, rel))
    _warn_untracked(config, bindings)
    (run_dir / "instrumentation.diff").write_text("".join(diffs), encoding="utf-8")
    (run_dir / "sites.json").write_text(json.dumps(sites.to_json(), indent=0), encoding="utf-8")
    return sites, report


def _rewrite_file(original: bytes, rel: str, config: Config, sites: SiteTable, bindings: Bindings) -> bytes:
    """`rewrite_source` through the rewrite cache: a file rewritten before with the same options (and the same
    first site number) is read back, and libcst is not even imported."""
    options = (
        "program", f"first site {len(sites.sites) + 1}", *config.modules_to_instr, "models", *config.models_to_track,
        "meta_from", *(f"{k}={v}" for k, v in sorted(config.meta_from.items())),
    )
    key = codecache.entry_key(original, rel, options)
    cached = codecache.load_rewrite(key)
    if cached is not None:
        rewritten, entries, found, candidates = cached
        sites.add(entries)
        bindings.merge(Bindings(found, candidates))  # marshal keeps tuples and lists apart
        return rewritten
    from .rewrite import rewrite_source

    before, found_here = len(sites.sites), Bindings()
    rewritten = rewrite_source(
        original, rel, modules=tuple(config.modules_to_instr), sites=sites, models=tuple(config.models_to_track),
        meta_from=dict(config.meta_from), bindings=found_here,
    )
    bindings.merge(found_here)
    try:
        codecache.store_rewrite(key, rewritten, sites.since(before), found_here.found, found_here.candidates)
    except (OSError, ValueError) as exc:
        _say(f"note: cannot write the rewrite cache in {codecache.cache_dir()} ({exc}); rewriting at every run")
    return rewritten


def _warn_untracked(config: Config, bindings: Bindings) -> None:
    """A models_to_track name bound nowhere: say so before the run, with the bindings that look like models."""
    for name in config.models_to_track:
        if name in bindings.found:
            continue
        seen = sorted({f"{target} ({file}:{line})" for target, file, line in bindings.candidates})
        hint = f"; bindings that look like models: {', '.join(seen)}" if seen else "; no binding looks like a model"
        _say(f"warning: models_to_track: '{name}' is never bound in the instrumented files, so it is not tracked{hint}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _copy_mode(src: Path, dst: Path) -> None:
    """The source's permission bits (an executable stays executable), within the user's umask."""
    os.chmod(dst, stat.S_IMODE(src.stat().st_mode) & ~_umask())


def _copy(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    _copy_mode(src, dst)


def _diff(original: bytes, rewritten: bytes, rel: str) -> list[str]:
    a = original.decode("utf-8", "replace").splitlines(keepends=True)
    b = rewritten.decode("utf-8", "replace").splitlines(keepends=True)
    return list(difflib.unified_diff(a, b, f"a/{rel}", f"b/{rel}", n=0))


def _config_json(config: Config) -> dict:
    out = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        if isinstance(v, Path):
            v = str(v)
        elif isinstance(v, (tuple, list)):
            v = [str(x) if isinstance(x, Path) else x for x in v]
        elif isinstance(v, dict):
            v = dict(v)
        out[f.name] = v
    return out


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _command(config: Config, run_dir: Path) -> list[str]:
    script = run_dir / Path(config.pyscript).name
    if config.shscript is None:
        return [sys.executable, str(script), *config.args]
    sh = Path(config.shscript)
    text = sh.read_text(encoding="utf-8")
    replaced, count = replace_script_words(text, Path(config.pyscript), script, (sh.parent, Path.cwd()))
    if count == 0:
        raise RunError(f"shscript {sh}: no word names the pyscript {Path(config.pyscript).name}; nothing would be traced")
    launcher = run_dir / f"launch_{sh.name}"
    launcher.write_text(replaced, encoding="utf-8")
    return ["bash", str(launcher), *config.args]


def _environment(config: Config, run_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(Path(config.pyscript).resolve().parent)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    paths.append(PACKAGE_PARENT)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["TC_REWRITE_RUN_DIR"] = str(run_dir)
    if sys.stderr.isatty():  # someone watches: say so when a first run rewrites library modules (libraries.py)
        env.setdefault("TC_REWRITE_PROGRESS", "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    if config.shscript is not None:  # `python`, `torchrun` in the launcher are this interpreter's, as in an active venv
        env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH", "")) if p)
    return env


class _Tee:
    """Copies one of the child's streams to ours and, interleaved with the other, to program_output.txt."""

    def __init__(self, source, sink, log, lock) -> None:
        self.thread = threading.Thread(target=self._pump, args=(source, sink, log, lock), daemon=True)
        self.thread.start()

    @staticmethod
    def _pump(source, sink, log, lock) -> None:
        fd = source.fileno()
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            with lock:
                log.write(chunk)
                log.flush()
            try:
                sink.write(chunk)
                sink.flush()
            except (OSError, ValueError):
                pass


def _launch(command: list[str], env: dict[str, str], run_dir: Path) -> int:
    lock = threading.Lock()
    with open(run_dir / "program_output.txt", "wb") as log:
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, process_group=0)

        def forward(signum, frame):
            try:
                os.killpg(child.pid, signum)
            except ProcessLookupError:
                pass

        previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            tees = [
                _Tee(child.stdout, sys.stdout.buffer, log, lock),
                _Tee(child.stderr, sys.stderr.buffer, log, lock),
            ]
            code = child.wait()
            for t in tees:
                t.thread.join()
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
    return 128 - code if code < 0 else code


def count_records(trace_dir: Path) -> dict:
    """Lines per kind across the trace files, and how many files end in a torn frame."""
    counts = {"api": 0, "state": 0, "files": 0, "truncated_files": 0}
    if not trace_dir.is_dir():
        return counts
    for path in sorted(trace_dir.glob("trace_*.log.zst")):
        counts["files"] += 1
        lines, torn = 0, False
        for data in decompressed_chunks(path, resync=True):
            if data is None:
                torn = True
                continue
            lines += data.count(b"\n")
        counts["truncated_files"] += torn
        counts["state" if path.name.startswith("trace_VAR_") else "api"] += lines
    return counts


def _sampling(config: Config) -> dict | None:
    """Steps 1..warm_up, then every interval-th step; TrainCheck's defaults: 10 and 10 with invariants, else all."""
    interval = config.sampling_interval or (10 if config.invariants else 1)
    warm_up = config.warm_up_steps if config.warm_up_steps is not None else (10 if config.invariants else 1)
    return None if interval == 1 else {"interval": interval, "warm_up": warm_up}


def _selection(config: Config):
    if not config.invariants:
        return None
    selection = load_selection(config.invariants)
    _say(f"selective collection: {selection.describe()}")
    outside = selection.outside(config.modules_to_instr)
    if outside:
        _say(f"warning: {len(outside)} selected APIs are outside modules_to_instr and cannot be recorded: {', '.join(outside[:5])}")
    if selection.variables and not config.models_to_track:
        _say("warning: some invariants are about model state, but models_to_track is empty: they cannot be checked")
    return selection


def _report_unserved(selection, config: Config, run_dir: Path) -> None:
    """Invariants this trace cannot serve: they name APIs that never got a record."""
    from .trace.reader import read_records

    logged = {r.get("function") for r in read_records(run_dir, kinds=("API",)) if r.get("type") != "function_call (pre)"}
    count, missing = selection.unserved(logged)
    if count:
        hint = "" if config.rewrite_libraries else " (calls made inside library code need rewrite_libraries)"
        _say(f"warning: {count} invariants name APIs this run never logged{hint}: {', '.join(missing[:5])}" + (" ..." if len(missing) > 5 else ""))


def _plain_traces(run_dir: Path, live: LiveExport | None, sealed: bool) -> dict:
    """TrainCheck's engine reads plain `trace_*` files from the folder it is given (`traincheck-check -f RUN`): made
    while the program ran (live.py) or, when that could not be, now."""
    try:
        stats = live.finish(sealed) if live is not None else None
        made_live = stats is not None
        if stats is None:
            stats = export_beside(run_dir)
    except (OSError, ExportError) as exc:
        _say(f"warning: the plain traces for TrainCheck's engine could not be written ({exc}); 'tc-rewrite trace export' writes them")
        return {"written": False, "error": str(exc)}
    out = {"written": True, "files": stats.files, "records": stats.records, "dropped_open_calls": stats.dropped_open_calls,
           "while_running": made_live}
    if live is not None and not made_live:
        out["why_after"] = live.failed
    return out


def collect(config: Config, *, summary: bool = False) -> int:
    try:
        selection = _selection(config)
    except ConfigError as exc:
        _say(f"error: {exc}")
        return 2
    versions = {m: _distribution_version(m) for m in config.modules_to_instr}
    try:
        run_dir, created = _run_folder(config, versions)
    except RunError as exc:
        _say(f"error: {exc}")
        return 2
    except OSError as exc:
        _say(f"error: output_dir: cannot create the run folder {config.output_dir or os.getcwd()}: {exc.strerror}")
        return 2
    try:
        _, files = instrument_files(config, run_dir)
        command = _command(config, run_dir)
    except (RewriteError, RunError, OSError, UnicodeDecodeError) as exc:
        _discard(run_dir, created)
        _say(f"error: {exc}")
        return 2
    info = {
        "tool": {"name": "traincheck_rewrite", "version": __version__},
        "status": "instrumented" if config.only_instr else "running",
        "config": _config_json(config),
        "versions": {"python": platform.python_version(), **versions},
        "command": command,
        "cwd": os.getcwd(),
        "source_root": str(Path(config.pyscript).resolve().parent),
        "files": files,
        "runtime": {
            "modules": list(config.modules_to_instr),
            "model_tracker_style": config.model_tracker_style,
            "tensor_dump_format": config.tensor_dump_format,
            "meta_vars": dict(config.meta_vars),
            "sampling": _sampling(config),
            "select": selection.runtime() if selection is not None else None,
            "rewrite_libraries": list(config.rewrite_libraries),
            "rewrite_frameworks": config.rewrite_frameworks,
            "log_import_time_calls": config.log_import_time_calls,
        },
    }
    _write_json(run_dir / "run.json", info)
    _say(f"run folder: {run_dir}")
    if config.only_instr:
        return 0
    (run_dir / "traces").mkdir(exist_ok=True)
    live = LiveExport(run_dir) if config.plain_traces else None
    if live is not None:
        live.start()
    started = time.time()
    info["started"] = _dt.datetime.fromtimestamp(started).isoformat(timespec="seconds")
    _write_json(run_dir / "run.json", info)
    try:
        code = _launch(command, _environment(config, run_dir), run_dir)
    except OSError as exc:
        _say(f"error: cannot start {command[0]}: {exc.strerror}")
        code = 127
    ended = time.time()
    recovered = seal(run_dir)
    incomplete = (run_dir / "traces" / "INCOMPLETE").exists()
    if incomplete:
        _say("warning: the trace is incomplete: a trace file could not be written (see the program's warning)")
    if config.plain_traces:
        info["plain_traces"] = _plain_traces(run_dir, live, recovered["sealed_files"] > 0)
    info.update(
        status="finished",
        trace_complete=not incomplete,
        ended=_dt.datetime.fromtimestamp(ended).isoformat(timespec="seconds"),
        duration_s=round(ended - started, 3),
        exit_code=code,
        records={**count_records(run_dir / "traces"), **recovered},
    )
    _write_json(run_dir / "run.json", info)
    if selection is not None:
        _report_unserved(selection, config, run_dir)
    if summary:
        from .trace.summary import format_summary, summarize

        _say("trace summary:\n" + format_summary(summarize(run_dir)))
    _say(f"run folder: {run_dir} (exit code {code})")
    return code
