"""Static name analysis: which call sites can be proven never to reach an instrumented API.

Every call that might reach an instrumented module is wrapped and decided at run time, so this analysis only has to
be sound when it says "skip": a builtin that nothing rebinds, a function or class the file defines itself, an
attribute of a standard-library module, a method of a string literal.
"""

from __future__ import annotations

import ast
import builtins
import sys
from dataclasses import dataclass, field

# Builtins that look at their caller's frame: wrapping them would make them look at the wrapper's.
FRAME_SENSITIVE = frozenset({"super", "locals", "globals", "vars", "dir", "eval", "exec", "breakpoint"})
BUILTIN_NAMES = frozenset(n for n in dir(builtins) if not n.startswith("_"))
STDLIB_MODULES = frozenset(getattr(sys, "stdlib_module_names", ())) - {"__main__"}


HOOK = "_tc_"  # the name rewritten code calls, unless the file itself uses it (hook_name)
# Decorators whose functions TorchScript compiles from source: their bodies must stay free of Python-only calls.
TORCHSCRIPT_DECORATORS = ("jit.script", "jit.script_method", "jit.interface", "jit.script_if_tracing")


def hook_name(source: str | bytes) -> str:
    """The name rewritten code calls the runtime by in this file: `_tc_`, or `_tc_1_`, `_tc_2_`, ... when the file's
    text holds it anywhere (an identifier, an attribute, a string given to `globals()` or `getattr`), so the program's
    own names never collide with the runtime's. Derived from the source alone, so cached rewrites carry it."""
    text = source.decode("latin-1") if isinstance(source, bytes) else source  # any byte string maps 1:1
    name, n = HOOK, 0
    while name in text:
        n += 1
        name = f"{HOOK}{n}_"
    return name


def dotted_name(node) -> str | None:
    """`a.b.c` for a libcst Name/Attribute chain, else None."""
    import libcst as cst  # here, not at the top: the library rewriter (library.py) uses this module without libcst

    parts = []
    while isinstance(node, cst.Attribute):
        parts.append(node.attr.value)
        node = node.value
    if not isinstance(node, cst.Name):
        return None
    parts.append(node.value)
    return ".".join(reversed(parts))


def ast_dotted_name(node: ast.AST) -> str | None:
    """`a.b.c` for an `ast` Name/Attribute chain, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
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


def collect_names(tree: ast.Module, modules: tuple[str, ...]) -> NameFacts:
    """Walk the `ast` of the file (C-speed parse, cheap walk) and classify every binding."""
    facts = NameFacts()
    other = facts.other_bindings

    def bind_import(name: str, module: str) -> None:
        if module_matches(module, modules):
            facts.instrumented_imports[name] = module
        elif module.split(".")[0] in STDLIB_MODULES:
            facts.stdlib_imports.add(name)
        else:
            other.add(name)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    bind_import(alias.asname, alias.name)
                else:
                    top = alias.name.split(".")[0]
                    bind_import(top, top)
        elif isinstance(node, ast.ImportFrom):
            module = "" if node.level else (node.module or "")
            for alias in node.names:
                if alias.name == "*":
                    facts.instrumented_star |= bool(module) and module_matches(module, modules)
                elif module:
                    bind_import(alias.asname or alias.name, f"{module}.{alias.name}")
                else:
                    other.add(alias.asname or alias.name)  # the user's own package
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            (other if node.decorator_list else facts.user_defs).add(node.name)
        elif isinstance(node, ast.arg):
            other.add(node.arg)
        elif isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            other.add(node.id)  # assignment, for/with/comprehension targets, walrus, del
        elif isinstance(node, ast.ExceptHandler) and node.name:
            other.add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            other.update(node.names)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)) and node.name:
            other.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            other.add(node.rest)
    return facts
