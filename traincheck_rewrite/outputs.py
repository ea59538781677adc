"""Where a command may write: never into a run folder's own records, never over an existing file unless told to.

A run folder's records are what `tc-rewrite` wrote there (RECORDS, the plain `trace_*` files, the instrumented
sources): losing one loses the run. So inside a run folder nothing that exists is replaced, even with `--force`, and
no new path takes a record's name; elsewhere an existing file is replaced only with `--force`, and a folder target
must be new or empty.
"""

from __future__ import annotations

from pathlib import Path

NO_PLAIN_TRACES = "PLAIN_TRACES_NOT_WRITTEN.txt"  # run.py's marker until the plain traces are in the folder
RUNTIME_LINK = "traincheck_rewrite"  # run.py's link to this package: how the program imports the runtime
RECORDS = ("run.json", "sites.json", "instrumentation.diff", "program_output.txt", "traces", "original_sources",
           RUNTIME_LINK, NO_PLAIN_TRACES)  # fmt: skip
TRAINCHECK_RUN_PREFIX = "traincheck_run_"  # TrainCheck's run folders, and ours when --output-dir is not given


class OutputPathError(Exception):
    """A one-line reason a command will not write to a path."""


def is_run_folder(folder: Path) -> bool:
    """A folder `tc-rewrite` (run.json beside sites.json) or TrainCheck's collector (its folder name) wrote."""
    return folder.name.startswith(TRAINCHECK_RUN_PREFIX) or (
        (folder / "run.json").is_file() and (folder / "sites.json").is_file()
    )


def _where(path: Path) -> Path:
    """The entry `path` names, its folders' links resolved (a link itself is what a write would replace)."""
    path = Path(path).expanduser().absolute()
    return path.parent.resolve() / path.name


def _run_folder_above(path: Path) -> Path | None:
    return next((folder for folder in path.parents if is_run_folder(folder)), None)


def check_not_in_records(path: str | Path) -> Path:
    """Refuse `path` when it is an existing entry of a run folder, or a new one under a record's name there; returns
    the path with its folders resolved. (A run folder itself is not empty: the callers refuse it as such.)"""
    where = _where(path)
    run = _run_folder_above(where)
    if run is None:
        return where
    if where.exists() or where.is_symlink():
        raise OutputPathError(f"{path}: is part of the run folder {run}; write elsewhere (even --force never replaces "
                              "a run's records)")
    top = where.relative_to(run).parts[0]
    if top in RECORDS or top.startswith("trace_"):
        raise OutputPathError(f"{path}: '{top}' is a record's name in the run folder {run}; write elsewhere")
    return where


def check_file_target(path: str | Path, *, force: bool = False) -> Path:
    """A file a command is about to write (replace atomically): new, or an existing file with `force`, never a
    folder, never in a run folder's records."""
    where = check_not_in_records(path)
    if where.is_dir():
        raise OutputPathError(f"{path}: is a folder; give a file name such as trace.json.gz")
    if (where.exists() or where.is_symlink()) and not force:
        raise OutputPathError(f"{path}: already exists; give a new file name (--force replaces it)")
    return where


def check_folder_target(path: str | Path) -> Path:
    """A folder a command is about to fill: new or empty, never in a run folder's records."""
    where = check_not_in_records(path)
    if (where.exists() or where.is_symlink()) and not where.is_dir():
        raise OutputPathError(f"{path}: already exists and is not a folder")
    if where.is_dir() and any(where.iterdir()):
        raise OutputPathError(f"{path}: already exists and is not an empty folder")
    return where
