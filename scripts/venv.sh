#!/usr/bin/env bash
# Create (once) and reuse ./.venv with the project installed in editable mode.
# torch is pinned to the CPU build this machine holds; an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
stamp="$venv/.tc-installed"
# the C speedups (setup.py) are built in place by the editable install: again whenever their source changes
speedups="$root/traincheck_rewrite/runtime/_speedups.c"
if [ ! -x "$venv/bin/python" ] || [ ! -f "$stamp" ] || [ "$root/pyproject.toml" -nt "$stamp" ] || [ "$root/setup.py" -nt "$stamp" ] || [ "$speedups" -nt "$stamp" ]; then
  if [ -f "$stamp" ]; then
    echo "updating .venv (pyproject.toml, setup.py or _speedups.c changed)..." >&2
  else
    echo "setting up .venv (first run, ~2 min)..." >&2
  fi
  if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
  "$venv/bin/pip" install -q --disable-pip-version-check -e "$root[test]" "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
  "$venv/bin/python" -c "import torch, libcst, zstandard, traincheck_rewrite.runtime._speedups"
  touch "$stamp"
fi
