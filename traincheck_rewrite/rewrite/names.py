"""Static name analysis: which call sites can be proven never to reach an instrumented API.

Every call that might reach an instrumented module is wrapped and decided at run time, so this analysis only has to
be sound when it says "skip": a builtin that nothing rebinds, a function or class the file defines itself, an
attribute of a standard-library module, a method of a string literal.
"""

from __future__ import annotations

import builtins
import sys
from dataclasses import dataclass, field

import libcst as cst

# Builtins that look at their caller's frame: wrapping them would make them look at the wrapper's.
FRAME_SENSITIVE = frozenset({"super", "locals", "globals", "vars", "dir", "eval", "exec", "breakpoint"})
BUILTIN_NAMES = frozenset(n for n in dir(builtins) if not n.startswith("_"))
STDLIB_MODULES = frozenset(getattr(sys, "stdlib_module_names", ())) - {"__main__"}


def dotted_name(node: cst.BaseExpression) -> str | None:
    """`a.b.c` for a Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, cst.Attribute):
        parts.append(node.attr.value)
        node = node.value
    if not isinstance(node, cst.Name):
        return None
    parts.append(node.value)
    return ".".join(reversed(parts))


def module_matches(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


@dataclass
class NameFacts:
    """How each module-wide name is bound, merged over all scopes (deliberately coarse: sound for skipping)."""

    user_defs: set[str] = field(default_factory=set)  # undecorated def/class names
    stdlib_imports: set[str] = field(default_factory=set)  # bound by importing a stdlib module or name
    instrumented_imports: dict[str, str] = field(default_factory=dict)  # name -> dotted path in an instrumented module
    other_bindings: set[str] = field(default_factory=set)  # bound any other way
    instrumented_star: bool = False

    def skippable_name(self, name: str) -> bool:
        """True when a call of the bare name `name` can never reach an instrumented API."""
        if name in self.other_bindings or name in self.instrumented_imports:
            return False
        if name in self.user_defs:
            return name not in self.stdlib_imports
        if name in self.stdlib_imports:
            return True
        if name in FRAME_SENSITIVE:
            return True
        return name in BUILTIN_NAMES and not self.instrumented_star

    def skippable_base(self, name: str) -> bool:
        """True when attributes of `name` can never be instrumented APIs (a standard-library module)."""
        return (
            name in self.stdlib_imports
            and name not in self.other_bindings
            and name not in self.user_defs
            and name not in self.instrumented_imports
        )


def _target_names(node: cst.CSTNode) -> list[str]:
    if isinstance(node, cst.Name):
        return [node.value]
    if isinstance(node, (cst.Tuple, cst.List)):
        return [n for el in node.elements for n in _target_names(el.value)]
    if isinstance(node, cst.StarredElement):
        return _target_names(node.value)
    return []


class NameCollector(cst.CSTVisitor):
    def __init__(self, modules: tuple[str, ...]) -> None:
        self.modules = modules
        self.facts = NameFacts()

    def _bind(self, names) -> None:
        self.facts.other_bindings.update(names)

    def _bind_import(self, name: str, module: str) -> None:
        if module_matches(module, self.modules):
            self.facts.instrumented_imports[name] = module
        elif module.split(".")[0] in STDLIB_MODULES:
            self.facts.stdlib_imports.add(name)
        else:
            self.facts.other_bindings.add(name)

    def visit_Import(self, node: cst.Import) -> None:
        for alias in node.names:
            full = dotted_name(alias.name) or ""
            if alias.asname is not None:
                self._bind_import(alias.asname.name.value, full)
            else:
                self._bind_import(full.split(".")[0], full.split(".")[0])

    def visit_ImportFrom(self, node: cst.ImportFrom) -> None:
        module = dotted_name(node.module) if node.module is not None else ""
        if node.relative:
            module = ""  # the user's own package
        if isinstance(node.names, cst.ImportStar):
            if module and module_matches(module, self.modules):
                self.facts.instrumented_star = True
            return
        for alias in node.names:
            bound = alias.asname.name.value if alias.asname else alias.name.value
            if module:
                self._bind_import(bound, f"{module}.{alias.name.value}")
            else:
                self.facts.other_bindings.add(bound)

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        (self.facts.other_bindings if node.decorators else self.facts.user_defs).add(node.name.value)

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        (self.facts.other_bindings if node.decorators else self.facts.user_defs).add(node.name.value)

    def visit_Param(self, node: cst.Param) -> None:
        self._bind([node.name.value])

    def visit_AssignTarget(self, node: cst.AssignTarget) -> None:
        self._bind(_target_names(node.target))

    def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
        self._bind(_target_names(node.target))

    def visit_AugAssign(self, node: cst.AugAssign) -> None:
        self._bind(_target_names(node.target))

    def visit_For(self, node: cst.For) -> None:
        self._bind(_target_names(node.target))

    def visit_CompFor(self, node: cst.CompFor) -> None:
        self._bind(_target_names(node.target))

    def visit_WithItem(self, node: cst.WithItem) -> None:
        if node.asname is not None:
            self._bind(_target_names(node.asname.name))

    def visit_ExceptHandler(self, node: cst.ExceptHandler) -> None:
        if node.name is not None:
            self._bind(_target_names(node.name.name))

    def visit_NamedExpr(self, node: cst.NamedExpr) -> None:
        self._bind(_target_names(node.target))

    def visit_Global(self, node: cst.Global) -> None:
        self._bind(item.name.value for item in node.names)

    def visit_Nonlocal(self, node: cst.Nonlocal) -> None:
        self._bind(item.name.value for item in node.names)

    def visit_MatchAs(self, node: cst.MatchAs) -> None:
        if node.name is not None:
            self._bind([node.name.value])

    def visit_MatchStar(self, node: cst.MatchStar) -> None:
        if node.name is not None:
            self._bind([node.name.value])

    def visit_MatchMapping(self, node: cst.MatchMapping) -> None:
        if node.rest is not None:
            self._bind([node.rest.value])

    def visit_Del(self, node: cst.Del) -> None:
        self._bind(_target_names(node.target))


def collect_names(module: cst.Module, modules: tuple[str, ...]) -> NameFacts:
    collector = NameCollector(modules)
    module.visit(collector)
    return collector.facts
