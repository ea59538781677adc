#!/usr/bin/env bash
# Set up .venv if needed, then instrument and run the bundled MLP fixture; prints the run folder (the argument, a new
# or empty folder, else runs/mlp_<time>) and the commands to try next on it.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$root/scripts/venv.sh"
run=${1:-$root/runs/mlp_$(date +%Y-%m-%d_%H-%M-%S)}
code=0
"$root/.venv/bin/tc-rewrite" "$root/fixtures/mlp/config.yaml" --output-dir "$run" --summary || code=$?
if [ "$code" -eq 0 ]; then
  run=$(cd "$run" && pwd)
  q() { case "$1" in "$PWD"/*) printf '%q' "${1#"$PWD"/}" ;; *) printf '%q' "$1" ;; esac; }  # relative to here
  cat >&2 <<NEXT

Next: put tc-rewrite on PATH (once per shell), then try these on the run folder:
  source $(q "$root/.venv/bin/activate")
  tc-rewrite trace summary $(q "$run")
  tc-rewrite trace export $(q "$run") --format chrome --to $(q "$run.json.gz")
      (the timeline: vizviewer $(q "$run.json.gz"), or open the file in https://ui.perfetto.dev)
  bash $(q "$root/scripts/demo.sh") $(q "${run}_again")
  tc-rewrite trace diff $(q "$run") $(q "${run}_again")
      (where two runs first differ; these two, same seed, are equal)
TrainCheck's workflow, invariants inferred from this run and another run checked against them (docs/traincheck.md):
  bash $(q "$root/scripts/traincheck_venv.sh")
  $(q "$root/.venv-traincheck/bin/traincheck-infer") -f $(q "$run") -o $(q "${run}_invariants.json")
  tc-rewrite $(q "$root/fixtures/mlp/config.yaml") --invariants $(q "${run}_invariants.json") --output-dir $(q "${run}_checked")
  $(q "$root/.venv-traincheck/bin/traincheck-check") -f $(q "${run}_checked") -i $(q "${run}_invariants.json") -o $(q "${run}_report")
NEXT
fi
exit "$code"
