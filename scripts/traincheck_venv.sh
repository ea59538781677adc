#!/usr/bin/env bash
# Create (once) and print the path of a virtualenv holding TrainCheck's engine (traincheck==0.2.0), kept apart from
# the project's .venv: TrainCheck pins nothing and pulls pandas, polars and numba, none of which we depend on.
# torch is pinned first so that pip takes the CPU build on this machine instead of a multi-GB CUDA build.
# TC_TRAINCHECK_VENV overrides the location (default: .venv-traincheck beside .venv).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${TC_TRAINCHECK_VENV:-$root/.venv-traincheck}
marker="$venv/.traincheck-0.2.0-ready"
if [ ! -f "$marker" ]; then
    mkdir -p "$(dirname "$venv")"
    exec 9>"$venv.lock"
    flock 9  # parallel test workers: one creates, the others wait and reuse
    if [ ! -f "$marker" ]; then
        rm -rf "$venv"
        python3 -m venv "$venv"
        "$venv/bin/python" -m pip install --quiet --disable-pip-version-check torch==2.13.0 traincheck==0.2.0 >&2
        "$venv/bin/traincheck-infer" --help >/dev/null
        touch "$marker"
    fi
fi
echo "$venv"
