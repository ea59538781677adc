"""Each script of tests/transparency/ run plainly and under tc-rewrite: same stdout, same exit code, same traceback
frames (file name, line number, function) and exception line, and calls logged from the script's own lines."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from helpers import ROOT, api_records, run_plain, run_tc, site_lines

HERE = Path(__file__).parent / "transparency"
SCRIPTS = sorted(HERE.glob("t_*.py"))
FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (.+)$')


def expected_exit(script: Path) -> int:
    """From the `# expect-exit: N` marker in the first lines (0 when there is none)."""
    for line in script.read_text(encoding="utf-8").splitlines()[:5]:
        m = re.match(r"#\s*expect-exit:\s*(\d+)", line)
        if m:
            return int(m.group(1))
    return 0


def traceback_shape(stderr: str) -> list[str]:
    """Frames as (basename, line, function) plus the exception line; source text and carets are left out."""
    shape = []
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        m = FRAME.match(line)
        if m:
            shape.append(f"{Path(m.group(1)).name}:{m.group(2)}:{m.group(3)}")
        elif line.startswith("Traceback") or (i == len(lines) - 1 and re.match(r"^\w[\w.]*(Error|Exception|Exit|Interrupt)\b", line)):
            shape.append(line)
    return shape


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
def test_script_behaves_the_same(script: Path, tmp_path: Path):
    plain = run_plain([sys.executable, script.name], cwd=script.parent)
    traced = run_tc(["--pyscript", str(script), "--models-to-track", "model"], tmp_path, cwd=script.parent)
    assert plain.returncode == expected_exit(script), plain.stderr
    assert traced.returncode == plain.returncode, traced.stderr
    assert traced.stdout == plain.stdout
    assert traceback_shape(traced.program_stderr) == traceback_shape(plain.stderr)


def test_relative_import_package_behaves_the_same(tmp_path: Path):
    pkg = HERE / "pkg_rel"
    if not pkg.is_dir():
        pytest.skip("no pkg_rel package")
    plain = run_plain([sys.executable, "-m", "pkg_rel.main"], cwd=HERE)
    # The package is instrumented as a copied tree and imported by module name from the run folder.
    traced = run_tc(["--pyscript", str(pkg / "main.py"), "--copy-all-files", "--only-instr"], tmp_path, cwd=HERE)
    assert traced.returncode == 0, traced.stderr
    run_dir = traced.run_dir
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "pkg_rel").symlink_to(run_dir, target_is_directory=True)
    again = run_plain([sys.executable, "-m", "pkg_rel.main"], cwd=staged, env_extra={"TC_REWRITE_RUN_DIR": str(run_dir)})
    assert again.returncode == plain.returncode == expected_exit(pkg / "main.py"), again.stderr
    assert again.stdout == plain.stdout
    assert site_lines(run_dir), "no call was logged from the package"


WARNING_SCRIPT = """\
import logging, os, sys, warnings
import torch
import warnlib

logging.basicConfig(format="%(filename)s:%(lineno)d:%(funcName)s %(message)s", stream=sys.stdout)
warnings.simplefilter("always")
warnings.showwarning = lambda msg, cat, filename, lineno, *rest: print(f"{os.path.basename(filename)}:{lineno}: {cat.__name__}: {msg}")


def main():
    warnlib.deprecated()
    torch.nn.functional.softmax(torch.ones(2, 3))  # no dim: torch warns, naming this line


main()
"""
WARNLIB = """\
import logging, warnings

log = logging.getLogger("warnlib")


def deprecated():
    warnings.warn("deprecated() is deprecated", DeprecationWarning, stacklevel=2)
    log.warning("deprecated() was called", stacklevel=2)
"""


def test_warnings_and_log_records_with_a_stacklevel_name_the_callers_line(tmp_path: Path):
    """A logged callee that warns or logs with stacklevel=2 names the user's line, not the recorder's wrapper."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "train.py").write_text(WARNING_SCRIPT)
    (src / "warnlib.py").write_text(WARNLIB)
    plain = run_plain([sys.executable, "train.py"], cwd=src)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.splitlines() == [
        "train.py:11: DeprecationWarning: deprecated() is deprecated",
        "train.py:11:main deprecated() was called",
        "train.py:12: UserWarning: Implicit dimension choice for softmax has been deprecated. Change the call to include dim=X as an argument.",
    ]
    traced = run_tc(
        ["--pyscript", str(src / "train.py"), "--copy-all-files", "--modules-to-instr", "torch", "--modules-to-instr", "warnlib"],
        tmp_path / "out", cwd=src,
    )
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout == plain.stdout
    logged = {r["function"] for r in api_records(traced.run_dir)}
    assert {"warnlib.deprecated", "torch.nn.functional.softmax"} <= logged


def test_dynamo_makes_the_same_graphs_and_graph_breaks_under_tracing(tmp_path: Path):
    """torch.compile never traces the recorder: loop markers, the hook and logged calls step aside while compiling."""
    fixture = ROOT / "fixtures" / "compiled_loops"
    env = {"TORCH_LOGS": "graph_breaks,recompiles"}
    plain = run_plain([sys.executable, "train.py"], cwd=fixture, env_extra=env, timeout=300)
    assert plain.returncode == 0, plain.stderr
    assert "graph_breaks 0" not in plain.stdout  # the fixture does break its graph
    traced = run_tc(["--pyscript", str(fixture / "train.py")], tmp_path, cwd=fixture, env_extra=env)
    assert traced.returncode == 0, traced.stderr
    assert traced.stdout == plain.stdout
    assert "monotonic" not in traced.stderr and "_tc_" not in traced.stderr, traced.stderr[-3000:]
    assert traced.program_stderr.count("Graph break") == plain.stderr.count("Graph break")
    assert any(r["function"] == "torch.optim.sgd.SGD.step" for r in api_records(traced.run_dir))
