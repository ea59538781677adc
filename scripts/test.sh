#!/usr/bin/env bash
# Set up .venv if needed, then run the whole test suite (2 workers).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/venv.sh"
cd "$root"
exec "$root/.venv/bin/python" -m pytest -n 2 "$@"
