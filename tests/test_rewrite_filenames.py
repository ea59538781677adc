"""Warnings and tracebacks of a traced program name the user's files (path, line and text), not the run folder's
instrumented copies; `__file__` still names the copy, and the copy still runs by itself."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import api_records, run_plain, run_tc

TRAIN = """\
import warnings
from pathlib import Path

import torch
import helper


def warn_here():
    warnings.warn("from the script", UserWarning, stacklevel=1)


def warn_caller():
    warnings.warn("blames the caller", UserWarning, stacklevel=2)


warn_here()
warn_caller()
helper.warn_here()
print((Path(__file__).parent / "data.txt").read_text().strip(), torch.ones(2).sum().item())
helper.fail(torch.ones(2))
"""
HELPER = """\
import warnings


def warn_here():
    warnings.warn("from the helper", UserWarning)


def fail(x):
    raise ValueError(f"boom {x.sum().item()}")
"""


@pytest.fixture()
def src(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "train.py").write_text(TRAIN)
    (folder / "helper.py").write_text(HELPER)
    (folder / "data.txt").write_text("data beside the script\n")
    return folder


@pytest.mark.parametrize("copy_all", [True, False], ids=["copy_all_files", "script_only"])
def test_warnings_and_tracebacks_name_the_users_files_as_the_plain_run_does(src: Path, tmp_path: Path, copy_all: bool):
    if not copy_all:  # only the script is copied: `__file__`-relative data is not there, as before
        (src / "train.py").write_text(TRAIN.replace('(Path(__file__).parent / "data.txt")', 'Path("data.txt")'))
    plain = run_plain([sys.executable, "train.py"], cwd=src)
    assert plain.returncode == 1
    assert f'File "{src / "train.py"}", line 20, in <module>' in plain.stderr  # what the comparison below holds to
    assert f"{src / 'train.py'}:17: UserWarning: blames the caller\n  warn_caller()\n" in plain.stderr
    traced = run_tc(["--pyscript", str(src / "train.py"), *(["--copy-all-files"] if copy_all else [])], tmp_path / "out", cwd=src)
    assert traced.returncode == 1
    assert traced.stdout == plain.stdout == "data beside the script 2.0\n"
    assert traced.program_stderr == plain.stderr
    assert "torch.ones" in {r["function"] for r in api_records(traced.run_dir)}


def test_the_run_folders_copy_still_runs_by_itself_and_names_the_users_file(src: Path, tmp_path: Path):
    traced = run_tc(["--pyscript", str(src / "train.py"), "--copy-all-files", "--only-instr"], tmp_path / "out", cwd=src)
    assert traced.returncode == 0, traced.stderr
    plain = run_plain([sys.executable, "train.py"], cwd=src)
    again = run_plain([sys.executable, str(traced.run_dir / "train.py")], cwd=src)
    assert again.returncode == plain.returncode == 1
    assert again.stdout == plain.stdout
    assert again.stderr == plain.stderr


def test_a_file_changed_since_the_rewrite_keeps_the_copys_name(src: Path, tmp_path: Path):
    """The user's file no longer holds the code that runs: naming it would show the wrong lines."""
    traced = run_tc(["--pyscript", str(src / "train.py"), "--copy-all-files", "--only-instr"], tmp_path / "out", cwd=src)
    assert traced.returncode == 0, traced.stderr
    (src / "helper.py").write_text("# edited after the run was made\n" + HELPER)
    again = run_plain([sys.executable, str(traced.run_dir / "train.py")], cwd=src)
    assert again.returncode == 1
    assert f'File "{traced.run_dir / "helper.py"}", line 9, in fail' in again.stderr
    assert f'File "{src / "train.py"}", line 20, in <module>' in again.stderr


def test_the_user_file_finder_resolves_folders_as_realpath_does(tmp_path: Path):
    """The finder asks, for every package the program imports, whether its folder lies in the run folder: it
    resolves a folder from its parent's resolution, and must agree with `os.path.realpath` through links, links to
    links, relative links and links out of the run folder and back in."""
    import os

    from traincheck_rewrite.runtime.user_files import UserFileFinder, UserFiles

    run = tmp_path / "run"
    (run / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "outside" / "deep").mkdir(parents=True)
    os.symlink(run / "pkg", tmp_path / "outside" / "to_pkg")  # out and back in
    os.symlink("../outside", run / "out")  # relative, out of the run folder
    os.symlink(tmp_path / "outside" / "to_pkg", tmp_path / "link_to_link")
    finder = UserFileFinder(UserFiles(str(run)))
    folders = [run / "pkg" / "sub", tmp_path / "outside" / "to_pkg" / "sub", run / "out" / "deep", tmp_path / "link_to_link" / "sub",
               tmp_path / "outside" / "deep", run / "pkg" / ".." / "pkg", run / "missing" / "x", tmp_path / "run"]  # fmt: skip
    for folder in map(str, folders):
        real = os.path.realpath(folder)
        assert finder._realpath(folder) == real, folder
        assert finder._in_run_folder(folder) == (real == str(run.resolve()) or real.startswith(str(run.resolve()) + os.sep)), folder
