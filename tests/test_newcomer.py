"""A newcomer's first commands: scripts/venv.sh says that it is installing (the first run is silent for minutes
otherwise), scripts/demo.sh ends with the next commands on its run folder (and they work), scripts/test.sh leaves the
worker count to a caller who chooses one. Each script runs from a copy of the repository's layout in a temporary
folder whose .venv holds stand-ins (the real install takes minutes and the network)."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from helpers import FIXTURES, ROOT

PROGRESS = "setting up .venv (first run, ~2 min)...\n"


def executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def layout(tmp_path: Path, *scripts: str) -> Path:
    """A repository root holding `scripts` (copied) and the files venv.sh watches."""
    root = tmp_path / "repo"
    for name in scripts:
        (root / "scripts").mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "scripts" / name, root / "scripts" / name)
    for name in ("pyproject.toml", "setup.py", "traincheck_rewrite/runtime/_speedups.c"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, root / name)
    return root


def bash(script: Path, *args: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=600, cwd=cwd,
                          env={**os.environ, **(env or {})})


def test_venv_says_when_it_installs_and_only_then(tmp_path: Path):
    root = layout(tmp_path, "venv.sh")
    for tool in ("python", "pip"):  # stand-ins for the venv's own: the install itself is not what is tested
        executable(root / ".venv" / "bin" / tool, "#!/bin/sh\nexit 0\n")
    first = bash(root / "scripts" / "venv.sh")
    assert first.returncode == 0 and first.stderr == PROGRESS and first.stdout == "", first
    again = bash(root / "scripts" / "venv.sh")
    assert again.returncode == 0 and again.stderr == "" and again.stdout == "", again
    later = (root / ".venv" / ".tc-installed").stat().st_mtime + 10
    os.utime(root / "setup.py", (later, later))  # newer than the stamp: installs again, and says so
    changed = bash(root / "scripts" / "venv.sh")
    assert changed.stderr.startswith("updating .venv") and changed.stderr.count("\n") == 1, changed


def test_test_sh_adds_two_workers_only_when_the_arguments_choose_none(tmp_path: Path):
    root = layout(tmp_path, "test.sh")
    executable(root / "scripts" / "venv.sh", "#!/bin/sh\nexit 0\n")
    executable(root / ".venv" / "bin" / "python", '#!/bin/sh\nprintf "%s\\n" "$@"\n')  # prints pytest's arguments
    for args, expected in [
        ([], ["-m", "pytest", "-n", "2"]),
        (["-p", "no:xdist", "tests/test_x.py"], ["-m", "pytest", "-p", "no:xdist", "tests/test_x.py"]),
        (["-pno:xdist", "-x"], ["-m", "pytest", "-pno:xdist", "-x"]),
        (["-n", "4", "-q"], ["-m", "pytest", "-n", "4", "-q"]),
        (["-n0"], ["-m", "pytest", "-n0"]),
        (["--numprocesses=3"], ["-m", "pytest", "--numprocesses=3"]),
        (["-k", "chrome"], ["-m", "pytest", "-n", "2", "-k", "chrome"]),
    ]:
        proc = bash(root / "scripts" / "test.sh", *args)
        assert proc.returncode == 0 and proc.stdout.splitlines() == expected, (args, proc)


def test_demo_ends_with_next_commands_that_work(tmp_path: Path):
    root = layout(tmp_path, "demo.sh", "venv.sh")
    shutil.copytree(FIXTURES / "mlp", root / "fixtures" / "mlp")
    bin_dir = root / ".venv" / "bin"
    executable(bin_dir / "python", "#!/bin/sh\nexit 0\n")
    executable(bin_dir / "pip", "#!/bin/sh\nexit 0\n")
    executable(bin_dir / "tc-rewrite", f'#!/bin/sh\nPYTHONPATH={shlex.quote(str(ROOT))} exec '
                                       f'{shlex.quote(sys.executable)} -m traincheck_rewrite "$@"\n')
    executable(bin_dir / "activate", f"PATH={shlex.quote(str(bin_dir))}:$PATH\n")
    (bin_dir.parent / ".tc-installed").touch()
    demo = bash(root / "scripts" / "demo.sh", cwd=tmp_path)
    assert demo.returncode == 0, demo.stderr
    (run,) = (root / "runs").iterdir()
    assert "step 19 loss" in demo.stdout and f"run folder: {run}" in demo.stderr
    ours, traincheck = demo.stderr[demo.stderr.index("\nNext: "):].split("TrainCheck's workflow")
    commands = [line.strip() for line in ours.splitlines() if line.startswith("  ") and not line.startswith("      (")]
    assert commands[0] == "source repo/.venv/bin/activate"  # paths relative to where the demo was started
    # every command works as printed, after the `source`
    tried = subprocess.run(["bash", "-c", "\n".join(["set -e", *commands])], capture_output=True, text=True,
                           timeout=600, cwd=tmp_path)
    assert tried.returncode == 0, tried.stderr
    assert "API calls (completed)" in tried.stdout and "equal:" in tried.stdout, tried.stdout
    assert Path(f"{run}.json.gz").is_file() and Path(f"{run}_again", "run.json").is_file()
    # TrainCheck's (they install TrainCheck first): the engine on this run folder, then on a run checked against it
    rel = run.relative_to(tmp_path)
    assert "docs/traincheck.md" in traincheck
    engine = "repo/.venv-traincheck/bin/traincheck"
    assert [shlex.split(line) for line in traincheck.splitlines() if line.startswith("  ")] == [
        ["bash", "repo/scripts/traincheck_venv.sh"],
        [f"{engine}-infer", "-f", f"{rel}", "-o", f"{rel}_invariants.json"],
        ["tc-rewrite", "repo/fixtures/mlp/config.yaml", "--invariants", f"{rel}_invariants.json", "--output-dir",
         f"{rel}_checked"],
        [f"{engine}-check", "-f", f"{rel}_checked", "-i", f"{rel}_invariants.json", "-o", f"{rel}_report"],
    ]
