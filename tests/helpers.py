"""Running the real tool and real scripts in subprocesses, and reading what they wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    run_dir: Path | None = None

    @property
    def program_stderr(self) -> str:
        """stderr without tc-rewrite's own lines."""
        return "".join(line for line in self.stderr.splitlines(keepends=True) if not line.startswith("tc-rewrite:"))


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TC_REWRITE_") or k == "TC_REWRITE_CACHE_DIR"}
    env.update(extra or {})
    return env


def run_plain(cmd: list[str], cwd: Path, env_extra: dict[str, str] | None = None, timeout: float = 120) -> Result:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=_env(env_extra), timeout=timeout)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def run_tc(
    args: list[str], out_dir: Path, cwd: Path | None = None, timeout: float = 300, env_extra: dict[str, str] | None = None
) -> Result:
    """`python -m traincheck_rewrite --output-dir RUN ARGS`: RUN is `out_dir` itself when it is new or empty (the run
    folder, as in TrainCheck), else a new `run_<n>` folder inside it."""
    run_dir = out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        run_dir = next(out_dir / f"run_{n}" for n in range(1000) if not (out_dir / f"run_{n}").exists())
    cmd = [sys.executable, "-m", "traincheck_rewrite", "--output-dir", str(run_dir), *args]
    proc = subprocess.run(cmd, cwd=cwd or ROOT, capture_output=True, text=True, env=_env(env_extra), timeout=timeout)
    made = (run_dir / "run.json").is_file()
    return Result(proc.returncode, proc.stdout, proc.stderr, run_dir if made else None)


def sites(run_dir: Path) -> dict[str, dict]:
    return json.loads((run_dir / "sites.json").read_text())


def api_records(run_dir: Path) -> list[dict]:
    from traincheck_rewrite.trace import read_records

    return [r for r in read_records(run_dir) if r["type"].startswith("function_call")]


def site_lines(run_dir: Path) -> set[tuple[str, int]]:
    """(file, line) of every site that has a logged call."""
    table = sites(run_dir)
    return {
        (table[str(r["site"])]["file"], table[str(r["site"])]["line"])
        for r in api_records(run_dir)
        if r.get("site") is not None
    }
