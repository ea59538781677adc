#!/usr/bin/env bash
# Set up .venv if needed, then instrument and run the bundled MLP fixture; prints the run folder (the argument, a new
# or empty folder, else runs/mlp_<time>).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/venv.sh"
exec "$root/.venv/bin/tc-rewrite" "$root/fixtures/mlp/config.yaml" --output-dir "${1:-$root/runs/mlp_$(date +%Y-%m-%d_%H-%M-%S)}" --summary
