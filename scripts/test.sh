#!/usr/bin/env bash
# Set up .venv if needed, then run the test suite: 2 workers, unless the arguments choose (-n N, -p no:xdist).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/venv.sh"
cd "$root"
workers=(-n 2)
for arg in "$@"; do
  case "$arg" in
    -n*|--numprocesses|--numprocesses=*|no:xdist|-pno:xdist) workers=() ;;
  esac
done
exec "$root/.venv/bin/python" -m pytest ${workers[@]+"${workers[@]}"} "$@"
