"""Count TrainCheck's set-up invariants in invariant files: totals and APIContain, with and without them.

    .venv/bin/python scripts/setup_invariants.py cnn.invariants.json [more.json ...]

A set-up invariant is one about calls torch makes while it sets itself up, not while the program trains. Under
TrainCheck's collector the first optimizer's construction imports `torch._dynamo`, which registers custom operators,
decompositions and config modules, all inside `Optimizer.add_param_group`; those calls come once per process, so a
rerun that finds torch already set up, or sets it up in another order, violates their invariants from step 0
(docs/bug-detection.md). The rule, applied to every API an invariant names (each `api_full_name` of its params):

1. a set-up API: a name under torch's operator registration and compiler machinery (`SETUP_MODULES`: `torch.library`,
   `torch._library`, `torch._ops`, `torch._decomp`, `torch._higher_order_ops`, `torch._dynamo`, `torch._export`,
   `torch._compile`, `torch._guards`, `torch._logging`, `torch.fx`, `torch.utils._config_module`,
   `torch._weights_only_unpickler`, `torch._vendor`, `torch._environment`, and pybind11's `parse_schema`, which
   TrainCheck names `torch.pybind11_...`), or a registration anywhere (the last part of the name starts with
   `register` or `_register`: `torch.distributed.device_mesh._register_distributed_opaque_types`), or
   `torch.serialization.add_safe_globals`;
2. an APIContain invariant whose containing call is `Optimizer.add_param_group`: what it contains under
   TrainCheck's collector is that import (`torch.utils._pytree.*`, `OrderedSet.__init__`, `distributed.is_available`
   beside the registrations of rule 1); the parameter group itself is a dict the engine reads as an argument.

An invariant is a set-up invariant when rule 1 holds for one of its APIs, or rule 2 holds. Everything else
(`Adam.step`, `adam.adam`, `torch.nn.init.*`, the modules' forwards, `zero_grad`, `manual_seed` and what they call,
`torch.compiler.is_compiling` inside an optimizer step) is about training.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

SETUP_MODULES = (
    "torch.library", "torch._library", "torch._ops", "torch._decomp", "torch._higher_order_ops", "torch._dynamo",
    "torch._export", "torch._compile", "torch._guards", "torch._logging", "torch.fx", "torch.utils._config_module",
    "torch._weights_only_unpickler", "torch._vendor", "torch._environment", "torch.pybind11_",
)  # fmt: skip
SETUP_FUNCTIONS = ("torch.serialization.add_safe_globals",)
SETUP_CONTAINER = "torch.optim.optimizer.Optimizer.add_param_group"
CONTAIN = "APIContainRelation"


def is_setup_api(name: str) -> bool:
    """Rule 1: a call of torch's operator registration and compiler machinery, or a registration."""
    if name in SETUP_FUNCTIONS or any(name == m or name.startswith(m + ".") or (m.endswith("_") and name.startswith(m))
                                      for m in SETUP_MODULES):  # fmt: skip
        return True
    return name.rsplit(".", 1)[-1].startswith(("register", "_register"))


def apis(invariant: dict) -> list[str]:
    return [p["api_full_name"] for p in invariant.get("params", []) if "api_full_name" in p]


def is_setup_invariant(invariant: dict) -> bool:
    names = apis(invariant)
    if invariant.get("relation") == CONTAIN and names and names[0] == SETUP_CONTAINER:
        return True
    return any(is_setup_api(name) for name in names)


def read_invariants(path: Path) -> list[dict]:
    """One JSON invariant a line, as `traincheck-infer -o` writes them."""
    out = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not a JSON invariant ({exc})") from None
    return out


def without_setup(invariants: list[dict]) -> Counter:
    """Invariants by relation, set-up invariants left out."""
    return Counter(inv["relation"] for inv in invariants if not is_setup_invariant(inv))


def counts(invariants: list[dict]) -> dict:
    """Totals and APIContain, with and without set-up invariants."""
    kept = without_setup(invariants)
    every = Counter(inv["relation"] for inv in invariants)
    return {"total": sum(every.values()), "total_without_setup": sum(kept.values()),
            "contain": every[CONTAIN], "contain_without_setup": kept[CONTAIN]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path, help="invariant files (traincheck-infer -o)")
    parser.add_argument("--list", action="store_true", help="also print each set-up invariant's description")
    args = parser.parse_args(argv)
    print(f"{'file':<40}{'total':>8}{'without set-up':>16}{'APIContain':>12}{'without set-up':>16}")
    for path in args.files:
        if not path.is_file():
            print(f"setup_invariants: {path}: no such file", file=sys.stderr)
            return 2
        try:
            invariants = read_invariants(path)
        except ValueError as exc:
            print(f"setup_invariants: {exc}", file=sys.stderr)
            return 2
        c = counts(invariants)
        print(f"{str(path):<40}{c['total']:>8}{c['total_without_setup']:>16}{c['contain']:>12}{c['contain_without_setup']:>16}")
        if args.list:
            for inv in invariants:
                if is_setup_invariant(inv):
                    print(f"  {inv['relation']}: {inv.get('text_description') or ', '.join(apis(inv))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
