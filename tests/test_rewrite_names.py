"""The runtime's names in rewritten code never collide with the program's: a file that uses `_tc_` gets another hook
name, in the program's files and in rewritten library modules alike."""

from __future__ import annotations

import sys
from pathlib import Path

from helpers import api_records, run_plain, run_tc

from traincheck_rewrite.rewrite import rewrite_library, rewrite_source

PROGRAM = """\
import torch
import mylib

_tc_ = "the program's own _tc_"


def _tc_1_(x):  # taken too: the rewrite picks the next free name
    return torch.mul(x, 3)


print(_tc_, _tc_1_(torch.ones(2)).sum().item(), mylib.double(torch.ones(3)).sum().item())
"""
MYLIB = """\
import torch


def _tc_(x):
    return torch.mul(x, 2)


def double(x):
    return _tc_(x)
"""


def test_a_program_and_a_library_that_define_tc_run_as_plainly(tmp_path: Path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text(PROGRAM)
    (src / "mylib.py").write_text(MYLIB)
    plain = run_plain([sys.executable, "train.py"], cwd=src)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout == "the program's own _tc_ 6.0 6.0\n"
    traced = run_tc(["--pyscript", str(src / "train.py"), "--rewrite-libraries", "mylib"], tmp_path / "out", cwd=src)
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout == plain.stdout
    assert "_tc_2_(" in (traced.run_dir / "train.py").read_text()
    logged = [r["function"] for r in api_records(traced.run_dir) if r["type"] == "function_call (pre)"]
    assert logged.count("torch.mul") == 2  # one from the program's function, one from inside the library
    assert "torch.ones" in logged


def test_the_hook_name_avoids_every_text_the_file_holds_and_rewriting_stays_idempotent():
    src = 'import torch\nx = globals()["_tc_"] if "_tc_1_" in globals() else torch.ones(1)\n'
    out = rewrite_source(src, "t.py")
    assert "_tc_2_ = _tc_2_boot.attach(__file__)" in out and "_tc_2_(1, torch.ones)(1)" in out
    assert rewrite_source(out, "t.py") == out
    lib = rewrite_library(b"import torch\n_tc_ = 1\ny = torch.ones(_tc_)\n", "m.py", "m.py", ("torch",), False)
    assert lib.splitlines()[2] == b'y = _tc_1_("m.py:3:4", torch.ones)(_tc_)'
