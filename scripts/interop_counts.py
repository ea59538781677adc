"""Invariants TrainCheck's engine infers from our traces and from TrainCheck's own collector on the same fixture.

    .venv/bin/python scripts/interop_counts.py fixtures/mlp [fixtures/interop ...]

For each fixture folder (train.py, config.yaml, optionally run.sh): collect with `tc-rewrite` and export; collect
with `traincheck-collect` (same script, `--models-to-track` from the config); run `traincheck-infer` on both; print
the number of invariants per relation side by side, as a Markdown table. The engine runs from the virtualenv of
scripts/traincheck_venv.sh. Extra `tc-rewrite` flags for our side: `--ours-flag=--rewrite-libraries=torch.optim`.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=1800)


def _infer(engine: Path, folder: Path, out: Path) -> collections.Counter | str:
    proc = _run([str(engine / "traincheck-infer"), "-f", str(folder), "-o", str(out)], out.parent)
    if proc.returncode != 0 or not out.exists():
        return f"infer failed ({proc.returncode})"
    return collections.Counter(json.loads(line)["relation"] for line in out.read_text().splitlines() if line.strip())


def ours(fixture: Path, work: Path, engine: Path, flags: list[str]) -> collections.Counter | str:
    runs = work / "ours"
    proc = _run([sys.executable, "-m", "traincheck_rewrite", str(fixture / "config.yaml"), "--output-dir", str(runs), *flags], ROOT)
    if proc.returncode != 0 or not (runs / "run.json").is_file():
        return f"collect failed ({proc.returncode})"
    export = work / "ours_export"
    proc = _run([sys.executable, "-m", "traincheck_rewrite", "trace", "export", str(runs), "--to", str(export)], ROOT)
    if proc.returncode != 0:
        return "export failed"
    return _infer(engine, export, work / "ours_inv.json")


def theirs(fixture: Path, work: Path, engine: Path) -> collections.Counter | str:
    config = yaml.safe_load((fixture / "config.yaml").read_text())
    src = work / "src"
    shutil.copytree(fixture, src)
    cmd = [str(engine / "traincheck-collect"), "--pyscript", "train.py", "--output-dir", str(work / "theirs")]
    if config.get("shscript"):
        cmd += ["--shscript", config["shscript"]]
    if config.get("models_to_track"):
        cmd += ["--models-to-track", *config["models_to_track"]]
    env = {**os.environ, "PATH": f"{engine}{os.pathsep}{os.environ.get('PATH', '')}"}  # its torchrun, its python
    proc = _run(cmd, src, env)
    if proc.returncode != 0:
        tail = (work / "theirs" / "program_output.txt")
        why = "SIGSEGV" if tail.exists() and "SIGSEGV" in tail.read_text(errors="replace") else f"exit {proc.returncode}"
        return f"collect failed ({why})"
    return _infer(engine, work / "theirs", work / "theirs_inv.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("fixtures", nargs="+", type=Path)
    parser.add_argument("--ours-flag", action="append", default=[], help="extra tc-rewrite flag (repeatable)")
    args = parser.parse_args()
    venv = _run(["bash", str(ROOT / "scripts" / "traincheck_venv.sh")], ROOT)
    if venv.returncode != 0:
        sys.exit(f"interop_counts: cannot set up TrainCheck's engine: {venv.stderr.strip().splitlines()[-1:]}")
    engine = Path(venv.stdout.strip().splitlines()[-1]) / "bin"
    for fixture in args.fixtures:
        fixture = fixture.resolve()
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            mine, other = ours(fixture, work, engine, args.ours_flag), theirs(fixture, work, engine)
        relations = sorted({*(mine if isinstance(mine, dict) else {}), *(other if isinstance(other, dict) else {})})
        print(f"\n{fixture.name}" + (f" (ours with {' '.join(args.ours_flag)})" if args.ours_flag else ""))
        print("| relation | traincheck_rewrite | traincheck-collect |\n| --- | ---: | ---: |")
        for relation in relations:
            print(f"| {relation} | {_cell(mine, relation)} | {_cell(other, relation)} |")
        print(f"| **total** | {_cell(mine, None)} | {_cell(other, None)} |")


def _cell(counts, relation) -> str:
    if isinstance(counts, str):
        return counts if relation is None else "-"
    return str(sum(counts.values()) if relation is None else counts.get(relation, 0))


if __name__ == "__main__":
    main()
