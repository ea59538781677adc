"""scripts/setup_invariants.py: which of TrainCheck's invariants are about torch setting itself up, on hand-written
invariant lines shaped as `traincheck-infer -o` writes them, through the script's command line."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import ROOT


def contain(parent: str, child: str) -> dict:
    return {"relation": "APIContainRelation", "text_description": f"{parent} always calls {child}",
            "params": [{"param_type": "APIParam", "api_full_name": parent},
                       {"param_type": "APIParam", "api_full_name": child}]}  # fmt: skip


def output(api: str) -> dict:
    return {"relation": "ConsistentOutputRelation", "params": [{"param_type": "APIParam", "api_full_name": api}]}


INVARIANTS = [
    contain("torch.optim.optimizer.Optimizer.add_param_group", "torch.utils._pytree.tree_flatten"),  # rule 2
    contain("torch.library.register_autograd", "torch.library.infer_schema"),  # rule 1
    contain("torch.optim.adam.Adam.step", "torch._library.custom_ops.CustomOpDef.register_fake"),  # rule 1, as the child
    output("torch.distributed.device_mesh._register_distributed_opaque_types"),  # a registration
    contain("torch.optim.adam.Adam.step", "torch.optim.adam.adam"),  # training
    contain("torch.optim.adam.Adam.step", "torch.compiler.is_compiling"),
    contain("torch.random.manual_seed", "torch._utils._LazySeedTracker.queue_seed_all"),
    output("torch.nn.init.calculate_gain"),
    {"relation": "ConsistencyRelation", "params": [{"param_type": "VarTypeParam", "var_type": "torch.nn.Parameter"}]},
]


def test_counts_totals_and_apicontain_with_and_without_setup_invariants(tmp_path):
    path = tmp_path / "invariants.json"
    path.write_text("".join(json.dumps(inv) + "\n" for inv in INVARIANTS))
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "setup_invariants.py"), str(path), "--list"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    header, counts, *listed = proc.stdout.splitlines()
    assert counts.split()[1:] == ["9", "5", "6", "3"]  # total, without set-up, APIContain, without set-up
    assert len(listed) == 4 and all("register" in line or "add_param_group" in line for line in listed)


def test_a_line_that_is_no_invariant_is_named_with_its_line_number(tmp_path):
    path = tmp_path / "invariants.json"
    path.write_text(json.dumps(INVARIANTS[0]) + "\n{not json\n")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "setup_invariants.py"), str(path)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 2 and f"{path}:2:" in proc.stderr
