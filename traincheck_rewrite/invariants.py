"""Selective collection: what a set of TrainCheck invariant files needs recorded (`--invariants`).

An invariant file is JSON Lines, one invariant per line, as `traincheck-infer -o` writes it: `relation`, `params`
(`APIParam` with `api_full_name`, `InputOutputParam` with `api_name`, `VarTypeParam`/`VarNameParam` with `var_type`),
and a `precondition` whose clauses name record fields (`prop_name`). We read that JSON ourselves; TrainCheck is not
imported. The selection keeps every API an invariant names, with its arguments only where an invariant reads them,
and model state only when an invariant is about variables.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .config import ConfigError

# Relations whose check reads the arguments of the calls they name.
_ARG_RELATIONS = {"DistinctArgumentRelation", "ConsistentInputOutputRelation"}
# Relations whose check reads state records of tracked variables.
_VAR_RELATIONS = {"APIContainRelation", "ConsistencyRelation"}


@dataclass
class Selection:
    functions: dict[str, bool] = field(default_factory=dict)  # API name -> record its arguments
    variables: bool = False  # some invariant is about tracked variables (state records)
    var_types: set[str] = field(default_factory=set)
    relations: Counter = field(default_factory=Counter)  # invariants per relation
    apis_of: list[set[str]] = field(default_factory=list)  # per invariant, the APIs it names

    def runtime(self) -> dict:
        """The `select` runtime setting the recorder reads from run.json."""
        return {"functions": dict(sorted(self.functions.items())), "variables": self.variables}

    def describe(self) -> str:
        with_args = sum(self.functions.values())
        relations = ", ".join(f"{n} {r}" for r, n in sorted(self.relations.items()))
        state = f"state of {', '.join(sorted(self.var_types))}" if self.variables else "no model state"
        return (
            f"{sum(self.relations.values())} invariants ({relations}) select {len(self.functions)} APIs "
            f"({with_args} with arguments) and {state}"
        )

    def outside(self, modules: list[str] | tuple[str, ...]) -> list[str]:
        """Selected APIs a run instrumenting `modules` cannot record: outside them, and no module's call (`model(x)`
        is named after the forward it runs, `__main__.Net.forward`, wherever its class is defined)."""
        module_calls = any(_within(_MODULE_CALL, m) for m in modules)
        return [
            f for f in self.functions
            if not any(_within(f, m) for m in modules) and not (module_calls and f.endswith(".forward"))
        ]

    def unserved(self, logged: set[str]) -> tuple[int, list[str]]:
        """How many invariants name an API that never got a record, and those APIs."""
        missing = sorted(set(self.functions) - logged)
        gone = set(missing)
        return sum(1 for apis in self.apis_of if apis & gone), missing


_MODULE_CALL = "torch.nn.modules.module.Module.__call__"  # what logs a module's call, named after its forward


def _within(name: str, module: str) -> bool:
    return name == module or name.startswith(module + ".")


def load_selection(paths) -> Selection:
    selection = Selection()
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"invariants: {path}: cannot read ({exc})") from None
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                invariant = json.loads(line)
            except ValueError as exc:
                raise ConfigError(f"invariants: {path}:{number}: not JSON ({exc.args[0].split(':')[0]})") from None
            if not isinstance(invariant, dict) or not isinstance(invariant.get("params"), list) or "relation" not in invariant:
                raise ConfigError(f"invariants: {path}:{number}: not a TrainCheck invariant (needs 'relation' and 'params')")
            _add(selection, invariant)
    if not selection.relations:
        raise ConfigError(f"invariants: no invariant in {', '.join(str(p) for p in paths)}")
    return selection


def _add(selection: Selection, invariant: dict) -> None:
    relation = str(invariant["relation"])
    selection.relations[relation] += 1
    reads_args = relation in _ARG_RELATIONS or _mentions_arguments(invariant.get("precondition"))
    apis = set()
    for param in invariant["params"]:
        if not isinstance(param, dict):
            continue
        kind = param.get("param_type")
        name = param.get("api_full_name") if kind == "APIParam" else param.get("api_name") if kind == "InputOutputParam" else None
        if isinstance(name, str):
            name = runtime_name(name)
            apis.add(name)
            needs = reads_args or kind == "InputOutputParam" or "arguments" in param
            selection.functions[name] = selection.functions.get(name, False) or needs
        elif kind in ("VarTypeParam", "VarNameParam") and relation in _VAR_RELATIONS:
            selection.variables = True
            selection.var_types.add(str(param.get("var_type")))
    selection.apis_of.append(apis)


def runtime_name(name: str) -> str:
    """The runtime's name of an API named as TrainCheck's collector (and our export) name it: tensor methods are
    `torch._C.TensorBase.<name>` there, `torch.Tensor.<name>` in the runtime; torch's C functions
    `torch._VariableFunctionsClass.<name>` there, `torch.<name>` in the runtime."""
    for theirs, ours in (("torch._C.TensorBase.", "torch.Tensor."), ("torch._VariableFunctionsClass.", "torch.")):
        if name.startswith(theirs):
            return ours + name[len(theirs):]
    return name


def _mentions_arguments(precondition) -> bool:
    """Whether a precondition clause reads a call's arguments (`args.*`, `kwargs.*`)."""
    text = json.dumps(precondition)
    return '"prop_name": "args' in text or '"prop_name": "kwargs' in text
