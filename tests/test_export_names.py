"""The export names torch's functions as TrainCheck's collector names them, where its engine's filters go by the name:
`torch.flatten` is `torch._VariableFunctionsClass.flatten` there, which traincheck 0.2.0 leaves out of its relations
(so no value invariants on its output shapes, which differ by nature between architectures)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from helpers import FIXTURES, ROOT, run_tc
from traincheck_rewrite.invariants import runtime_name
from traincheck_rewrite.trace import read_records


def _traincheck_python() -> Path:
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "traincheck_venv.sh")], capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1]) / "bin" / "python"


def test_the_list_of_torch_c_functions_is_the_installed_torchs():
    import torch

    from traincheck_rewrite.trace.torch_functions import VARIABLE_FUNCTIONS

    installed = {n for n in dir(torch._C._VariableFunctions) if not n.startswith("__")}
    assert installed == VARIABLE_FUNCTIONS, "regenerate traincheck_rewrite/trace/torch_functions.py for this torch"


def test_exported_torch_functions_carry_traincheck_collectors_own_names(tmp_path: Path):
    traced = run_tc([str(FIXTURES / "traincheck_api" / "config.yaml")], tmp_path)
    assert traced.returncode == 0, traced.stderr[-3000:]
    ours = {r["function"] for r in read_records(traced.run_dir) if r["type"] == "function_call (pre)"}
    exported = set()
    for path in traced.run_dir.glob("trace_API_*.log"):
        exported |= {json.loads(line)["function"] for line in path.read_text().splitlines() if '"function"' in line}
    assert "torch._VariableFunctionsClass.flatten" in exported and "torch.flatten" not in exported
    assert {"torch.flatten", "torch.conv2d", "torch.randn"} <= ours  # the runtime keeps the names users know
    # every exported name of a function torch exports is the name traincheck's own collector gives that function
    top_level = sorted(runtime_name(n)[len("torch."):] for n in exported if "." not in runtime_name(n)[len("torch."):])
    assert {"flatten", "conv2d", "randn", "set_num_threads"} <= set(top_level)
    script = "import json, sys, torch; from traincheck.utils import typename; print(json.dumps([typename(getattr(torch, n)) for n in sys.argv[1:]]))"
    proc = subprocess.run([str(_traincheck_python()), "-c", script, *top_level], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = json.loads(proc.stdout.splitlines()[-1])
    mine = [n for name in top_level for n in exported if runtime_name(n) == "torch." + name]
    assert mine == theirs
    assert all(runtime_name(n) in ours for n in exported)  # `--invariants` maps them back to the runtime's names
