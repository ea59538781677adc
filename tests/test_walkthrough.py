"""docs/trace-tools.md's walk-through stays true: every `$ command` in its blocks runs, in order, in a fresh folder
(with `tc-rewrite` on PATH and the repository's fixtures/), and prints what the page shows under it. In the page's
output a line `...` stands for any number of lines; pids, which change from run to run, are not compared."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import ROOT

DOC = ROOT / "docs" / "trace-tools.md"
SECTION = "## Walk-through: a healthy run and a planted bug"
PID = re.compile(r"pid \d+")


def sessions(markdown: str) -> list[tuple[str, list[str]]]:
    """(command, expected output lines) for each `$ ` line of the walk-through's code blocks, in page order. A
    command goes on over the next lines while a quote is open (a query over two lines)."""
    start = markdown.index(SECTION)
    section = markdown[start:markdown.index("\n## ", start + len(SECTION))]
    found: list[tuple[str, list[str]]] = []
    for block in re.findall(r"^```[a-z]*\n(.*?)^```", section, flags=re.M | re.S):
        lines = block.splitlines()
        assert lines and lines[0].startswith("$ "), f"a block of the walk-through does not start with '$ ': {block!r}"
        i = 0
        while i < len(lines):
            command = lines[i][2:]
            while True:
                try:
                    shlex.split(command)
                    break
                except ValueError:  # an open quote: the command goes on
                    i += 1
                    command += "\n" + lines[i]
            i += 1
            output = []
            while i < len(lines) and not lines[i].startswith("$ "):
                output.append(lines[i])
                i += 1
            found.append((command, output))
    return found


def matches(expected: list[str], actual: list[str]) -> bool:
    """`actual` is `expected` line for line, a `...` line standing for any number of lines."""
    if not expected:
        return not actual
    if expected[0] == "...":
        return any(matches(expected[1:], actual[n:]) for n in range(len(actual) + 1))
    return bool(actual) and actual[0] == expected[0] and matches(expected[1:], actual[1:])


def normal(lines: list[str]) -> list[str]:
    return [PID.sub("pid N", line.rstrip()) for line in lines]


def test_sessions_are_read_as_a_person_reads_them():
    found = sessions(DOC.read_text())
    commands = [command for command, _ in found]
    assert commands[0] == "tc-rewrite fixtures/diverge/config.yaml --output-dir runs/healthy"
    assert any("\n    HAVING count(*)" in command for command in commands)  # the query over two lines, whole
    assert ("echo $?", ["1"]) in found and ("echo $?", ["0"]) in found
    assert matches(["a", "...", "d"], ["a", "b", "c", "d"]) and matches(["a", "..."], ["a"])
    assert not matches(["a", "...", "d"], ["a", "b"]) and not matches(["a"], ["a", "b"])


@pytest.mark.slow
def test_walkthrough_commands_print_what_the_page_shows(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "tc-rewrite"
    tool.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m traincheck_rewrite \"$@\"\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    work = tmp_path / "repo"
    work.mkdir()
    (work / "fixtures").symlink_to(ROOT / "fixtures")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TC_REWRITE_") or k == "TC_REWRITE_CACHE_DIR"},
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    status = 0
    found = sessions(DOC.read_text())
    assert len(found) >= 15
    for command, expected in found:
        # `(exit N)` first: `echo $?` says how the command before it ended, as in a shell
        proc = subprocess.run(["bash", "-c", f"(exit {status}); {command}"], cwd=work, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600)
        status = proc.returncode
        assert matches(normal(expected), normal(proc.stdout.splitlines())), (
            f"$ {command}\n--- the page shows:\n" + "\n".join(expected) + "\n--- it prints:\n" + proc.stdout)
