"""collect(): make the run folder, write the instrumented sources, run them, stream their output, record the run.

The child runs in the directory `tc-rewrite` was started from, as `python train.py` would; with `copy_all_files`
paths relative to the script's own file (`Path(__file__).parent / "data"`) resolve inside the copied tree.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import difflib
import json
import os
import platform
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import __version__
from .checking import CHECK_DIR, EXIT_VIOLATED, CheckError, OnlineCheck, find_engine
from .config import Config, ConfigError
from .invariants import load_selection
from .outputs import NO_PLAIN_TRACES, RECORDS, RUNTIME_LINK, OutputPathError, check_not_in_records, is_run_folder
from .rewrite import Bindings, RewriteError, SiteTable
from .runtime import codecache
from .shscript import replace_script_words
from .trace.export import ExportError, export_beside
from .trace.live import LiveExport
from .trace.reader import decompressed_chunks
from .trace.recover import seal

ORIGINALS = "original_sources"  # the rewritten files as they were: what tracebacks and inspect.getsource show
_SKIP_DIRS = {".git", ".hg", ".svn", "__pycache__", ".venv", "venv", ".tox", ".mypy_cache", ".pytest_cache", "node_modules"}
PACKAGE_DIR = Path(__file__).resolve().parent
PACKAGE_PARENT = str(PACKAGE_DIR.parent)


class RunError(Exception):
    """A problem with the run set-up; one line."""


def _say(message: str) -> None:
    sys.stderr.write(f"tc-rewrite: {message}\n")
    sys.stderr.flush()


def _distribution_version(module: str) -> str:
    """The version of the distribution providing `module` (its own name first: mapping every installed
    distribution's modules takes longer than rewriting a script)."""
    top = module.split(".")[0]
    found = codecache.installed_version(top)
    if found:
        return found
    import importlib.metadata  # a distribution named unlike its module: a tenth of tc-rewrite's start-up to import

    for dist in importlib.metadata.packages_distributions().get(top, []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def _claim(folder: Path) -> None:
    """Create the folder's run.json exclusively (O_CREAT|O_EXCL): of two runs given one folder at the same moment,
    one gets it and the other is refused before it writes anything."""
    try:
        fd = os.open(folder / "run.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        raise RunError(f"output_dir: {folder} was taken by another run started at the same moment; give a new or "
                       "empty folder") from None
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(json.dumps({"tool": {"name": "traincheck_rewrite", "version": __version__}, "status": "starting"}) + "\n")


def _run_folder(config: Config, versions: dict[str, str]) -> tuple[Path, bool]:
    """The run folder, claimed by this run, and whether this run created it. With `output_dir`, that folder itself
    (as TrainCheck does), created if missing and refused if it holds anything or lies in a run folder's records;
    else a new folder named like TrainCheck's, traincheck_run_<script>_<module>_<version>..._<timestamp>, in the
    current directory."""
    if config.output_dir is not None:
        folder = Path(config.output_dir)
        if folder.is_dir() and any(folder.iterdir()):
            raise RunError(f"output_dir: {folder} exists and is not empty; give a new or empty folder")
        try:
            check_not_in_records(folder)
        except OutputPathError as exc:
            raise RunError(f"output_dir: {exc}") from None
        try:
            folder.mkdir(parents=True)
            created = True
        except FileExistsError:
            created = False
        if not folder.is_dir():
            raise RunError(f"output_dir: {folder} exists and is not a folder")
        _claim(folder)
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
        except FileExistsError:
            continue
        _claim(candidate)
        return candidate, True
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


def _skipped_dir(path: Path) -> bool:
    return path.name in _SKIP_DIRS or _is_venv(path) or is_run_folder(path)


def _resolve(link: Path) -> Path:
    try:
        return link.resolve()
    except (RuntimeError, OSError):  # RuntimeError: Python < 3.13's "Symlink loop"
        raise RunError(f"copy_all_files: {link} is a symlink loop; remove it or leave copy_all_files off") from None


def _copied_target(target: Path, root: Path, run_dir: Path) -> bool:
    """Whether `target` (resolved) is in the tree and not in a folder the copy skips: a link to it stays a link."""
    if not target.is_relative_to(root) or target.is_relative_to(run_dir):
        return False
    folder = root
    for part in target.relative_to(root).parts[:-1]:
        folder = folder / part
        if _skipped_dir(folder):
            return False
    return not (target.is_dir() and _skipped_dir(target))


def _tree_entries(root: Path, run_dir: Path, script: Path) -> tuple[list[Path], list[tuple[Path, Path]]]:
    """What of `root` to copy: its files, and its links (to files or folders) whose target is copied too, with that
    target. No VCS/venv/cache folders, no run folders, no links that leave the tree (or point into what is skipped);
    the script itself is always copied as a file."""
    root_resolved = root.resolve()
    run_resolved = run_dir.resolve()
    files: list[Path] = []
    links: list[tuple[Path, Path]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        keep = []
        for d in sorted(dirnames):
            p = here / d
            if p.is_symlink():
                target = _resolve(p)
                if _copied_target(target, root_resolved, run_resolved):
                    links.append((p, target))
                continue
            if _skipped_dir(p) or p.resolve() == run_resolved:
                continue
            keep.append(d)
        dirnames[:] = keep
        for f in sorted(filenames):
            p = here / f
            if p.is_symlink() and p != script:
                target = _resolve(p)
                if _copied_target(target, root_resolved, run_resolved):
                    links.append((p, target))
                continue
            if p.is_file():
                files.append(p)
    return files, links


def _plan_files(config: Config, run_dir: Path) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """(source file, copy) pairs, and (link in the run folder, its relative target) pairs."""
    script = Path(config.pyscript)
    if not config.copy_all_files:
        return [(script, run_dir / script.name)], []
    root = script.parent
    files, links = _tree_entries(root, run_dir, script)
    pairs = [(p, run_dir / p.relative_to(root)) for p in files]
    root_resolved = root.resolve()
    made_links = []
    for link, target in links:
        dst = run_dir / link.relative_to(root)
        made_links.append((dst, os.path.relpath(run_dir / target.relative_to(root_resolved), dst.parent)))
    for dst in [d for _, d in pairs] + [d for d, _ in made_links]:
        top = dst.relative_to(run_dir).parts[0]
        if top in RECORDS:
            raise RunError(f"copy_all_files: {root / dst.relative_to(run_dir)} would overwrite the run folder's own "
                           f"'{top}'; rename it")
    return pairs, made_links


def instrument_files(config: Config, run_dir: Path) -> tuple[SiteTable, list[dict]]:
    """Copy and rewrite the sources into `run_dir`; write instrumentation.diff and sites.json."""
    sites = SiteTable()
    bindings = Bindings()
    script = Path(config.pyscript).resolve()
    root = script.parent
    report: list[dict] = []
    diffs: list[str] = []
    pairs, links = _plan_files(config, run_dir)
    for src, dst in pairs:
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
    for dst, target in links:
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(target)
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


def _runtime_link(run_dir: Path) -> bool:
    """RUN/traincheck_rewrite, a link to this package: the program, started as RUN/<script>.py, imports the runtime
    from its own folder (sys.path[0]) and, however the tool is installed, the same code as the tool."""
    try:
        (run_dir / RUNTIME_LINK).symlink_to(PACKAGE_DIR, target_is_directory=True)
    except OSError:
        return False
    return True


def _environment(config: Config, run_dir: Path) -> dict[str, str]:
    """The program's environment: its sys.path is the plain run's (the script's folder first, then PYTHONPATH) after
    the run folder, and nothing of the tool's source folder (whose tests/ and scripts/ it could import)."""
    env = dict(os.environ)
    paths = [str(Path(config.pyscript).resolve().parent)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    if not _runtime_link(run_dir):
        paths.append(PACKAGE_PARENT)
    elif env.get("PYTHONSAFEPATH"):  # the script's folder is not put on sys.path: the run folder is, by name
        paths.insert(0, str(run_dir))
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


def _launch(command: list[str], env: dict[str, str], run_dir: Path, started=None) -> int:
    """Run the program, its output teed; `started(child)` is called once it runs (the checker's stop needs it)."""
    lock = threading.Lock()
    with open(run_dir / "program_output.txt", "wb") as log:
        child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, process_group=0)
        if started is not None:
            started(child)

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


def _plain_traces(run_dir: Path, stats, live: LiveExport | None) -> dict:
    """TrainCheck's engine reads plain `trace_*` files from the folder it is given (`traincheck-check -f RUN`): made
    while the program ran (`stats` of live.py) or, when that could not be, now."""
    try:
        if stats is None:
            stats = export_beside(run_dir)
    except (OSError, ExportError) as exc:
        _say(f"warning: the plain traces for TrainCheck's engine could not be written ({exc}); "
             f"'tc-rewrite trace export {shlex.quote(str(run_dir))} --in-place' writes them")
        return {"written": False, "error": str(exc)}
    made_live = live is not None and live.failed is None
    out = {"written": True, "files": stats.files, "records": stats.records, "dropped_open_calls": stats.dropped_open_calls,
           "while_running": made_live}
    if live is not None and not made_live:
        out["why_after"] = live.failed
    return out


class _Stopper:
    """`on_violation: stop`: the program ended at the first violation, as SIGTERM ends it (traces sealed)."""

    def __init__(self, live: LiveExport) -> None:
        self.live = live
        self.child = None
        self.at_step: int | None = None

    def __call__(self, violation: dict) -> None:
        if self.child is None or self.child.poll() is not None:
            return
        steps = dict(self.live.last_step)  # a copy: the live export's thread adds to it
        self.at_step = steps.get(violation["rank"], max(steps.values(), default=None))
        _say(f"stopping the program at step {self.at_step}: the first violation, at step {violation['step']}")
        try:
            os.killpg(self.child.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _finish_check(check: OnlineCheck, stopper: _Stopper | None, trace_ended: bool, code: int, run_dir: Path) -> tuple[dict, int]:
    """The checker's verdict for run.json, its summary line, and tc-rewrite's exit code (docs/traincheck.md)."""
    verdict = check.finish(trace_ended)
    verdict.stopped_at_step = stopper.at_step if stopper is not None else None
    stopped = verdict.stopped_at_step is not None
    first = f", the first at step {verdict.first_step}" if verdict.first_step is not None else ""
    tail = "" if verdict.complete else " (the checker did not see the whole trace)"
    _say(f"check: {verdict.invariants} invariants checked, {len(verdict.violated)} violated ({verdict.violations} violations{first})"
         f"{tail}; report: {run_dir / CHECK_DIR / 'report.html'}")
    if code != 0 and not stopped:
        return verdict.to_json(check.engine), code
    return verdict.to_json(check.engine), EXIT_VIOLATED if verdict.violations else code


def _mark_plain_traces_missing(run_dir: Path) -> None:
    """Until the plain traces are in the folder, a note saying how to make them (a killed tc-rewrite never writes
    them, and TrainCheck's engine fails on the folder); named so that the engine never reads it (not `trace_*`)."""
    command = f"tc-rewrite trace export {shlex.quote(str(run_dir))} --in-place"
    (run_dir / NO_PLAIN_TRACES).write_text(
        "The plain traces TrainCheck's engine reads (trace_API_*.log, trace_VAR_*.log) are written into this folder\n"
        "while the program runs and completed when it ends, and then this file is removed. If it is still here after the\n"
        f"run, tc-rewrite was stopped before completing them; this writes them whole:\n\n    {command}\n", encoding="utf-8")


def collect(config: Config, *, summary: bool = False) -> int:
    try:
        engine = find_engine(config.checker) if config.check or config.on_violation == "stop" else None
        selection = _selection(config)
    except (ConfigError, CheckError) as exc:
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
            "track_inner_updates": config.track_inner_updates,
        },
    }
    _write_json(run_dir / "run.json", info)
    _say(f"run folder: {run_dir}")
    if config.only_instr:
        return 0
    (run_dir / "traces").mkdir(exist_ok=True)
    if config.plain_traces:
        _mark_plain_traces_missing(run_dir)
    live = LiveExport(run_dir) if config.plain_traces else None
    if live is not None:
        live.start()
    check = stopper = None
    if engine is not None:
        stopper = _Stopper(live) if config.on_violation == "stop" else None
        check = OnlineCheck(run_dir, list(config.invariants), engine, live, on_violation=stopper)
        check.start()
    started = time.time()
    info["started"] = _dt.datetime.fromtimestamp(started).isoformat(timespec="seconds")
    _write_json(run_dir / "run.json", info)
    try:
        code = _launch(command, _environment(config, run_dir), run_dir, started=stopper and (lambda child: setattr(stopper, "child", child)))
    except OSError as exc:
        _say(f"error: cannot start {command[0]}: {exc.strerror}")
        code = 127
    ended = time.time()
    live_stats = live.finish() if live is not None else None  # before seal() rewrites the files of killed writers
    recovered = seal(run_dir)
    incomplete = (run_dir / "traces" / "INCOMPLETE").exists()
    if incomplete:
        _say("warning: the trace is incomplete: a trace file could not be written (see the program's warning)")
    if config.plain_traces:
        info["plain_traces"] = _plain_traces(run_dir, live_stats, live)
        if info["plain_traces"]["written"]:
            (run_dir / NO_PLAIN_TRACES).unlink(missing_ok=True)
    info.update(
        status="finished",
        trace_complete=not incomplete,
        ended=_dt.datetime.fromtimestamp(ended).isoformat(timespec="seconds"),
        duration_s=round(ended - started, 3),
        exit_code=code,
        records={**count_records(run_dir / "traces"), **recovered},
    )
    exit_code = code
    if check is not None:
        info["check"], exit_code = _finish_check(check, stopper, info["plain_traces"]["while_running"] is True, code, run_dir)
    _write_json(run_dir / "run.json", info)
    if selection is not None:
        _report_unserved(selection, config, run_dir)
    if summary:
        from .trace.summary import format_summary, summarize

        _say("trace summary:\n" + format_summary(summarize(run_dir)))
    _say(f"run folder: {run_dir} (exit code {code})")
    return exit_code
