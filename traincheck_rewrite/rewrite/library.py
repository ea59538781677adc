"""Library modules, rewritten by inserting text at the positions Python's own `ast` gives: the call wrapping of
calls.py and the loop markers of loops.py, for files that are compiled at import time and never shown rewritten.

The program's files go through libcst (api.py), which keeps them readable in `instrumentation.diff`. A library
module is rewritten when the program first imports it, and a framework's are long (transformers/trainer.py: 4,800
lines): libcst needs about 0.5 ms a line for it, 2.6 s for that file alone, while `ast.parse` (C) and a list of
insertions take a few milliseconds. Only text is inserted, never removed, and never across a line break, so every
line keeps its number and every original column its text. The caller compiles the result (once: the import
hook needs the code anyway) and falls back to the original module if that fails.

`f(a)` -> `_tc_("<library>:<line>:<col>", f)(a)`; `for x in it:` -> `for x in _tc_.loop("<site>", (it)):`;
`while c:` -> `while _tc_.cond("<site>", (c)):` (`_tc_` is `hook_name(source)`: another name where the module uses
that one). What is wrapped follows calls.py in library mode: calls the name analysis proves harmless are left alone,
and so are calls inside f-strings and bodies TorchScript compiles. One difference: in a module of an instrumented
package the module's own functions and classes are APIs (`torch.nn.init.kaiming_uniform_` calling
`_calculate_correct_fan` and `calculate_gain`), where a program's own are not; their calls are wrapped too.
"""

from __future__ import annotations

import ast

from .names import FRAME_SENSITIVE, TORCHSCRIPT_DECORATORS, NameFacts, ast_dotted_name, collect_names, hook_name, module_matches
from .results import RewriteError


def rewrite_library(
    source: bytes, filename: str, label: str, modules: tuple[str, ...], loops: bool, first_iterations: bool = False
) -> bytes:
    """Instrument the library module `source`; `label` ("torch/optim/sgd.py") prefixes its site strings. The hook is
    called by `hook_name(source)`: the loader puts it into the module's globals under that name. With
    `first_iterations`, a call inside a `for` loop goes through the hook only in the loop's first iteration (see
    `_Insertions._call`)."""
    try:
        tree = ast.parse(source, filename)
    except (SyntaxError, ValueError) as exc:
        raise RewriteError(f"{filename}: cannot parse: {exc}") from None
    lines = source.splitlines(keepends=True)
    facts = collect_names(tree, modules)
    if module_matches(_module_name(label), modules):  # its own functions are instrumented APIs: decided at run time
        facts.other_bindings |= _module_level_defs(tree) & facts.user_defs - FRAME_SENSITIVE
    finder = _Insertions(facts, lines, label, loops, hook_name(source), first_iterations)
    finder.visit(tree)
    result = _apply(lines, finder.insertions)
    if result.count(b"\n") != source.count(b"\n"):
        raise RewriteError(f"{filename}: internal error: the rewrite moved lines")
    return result


def _module_level_defs(tree: ast.Module) -> set[str]:
    """Names of the functions and classes defined at the module's top level (not methods: a method `type` does not
    make the builtin `type(x)` an API)."""
    return {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


def _module_name(label: str) -> str:
    """`torch.nn.init` for the label "torch/nn/init.py", `torch.optim` for "torch/optim/__init__.py"."""
    parts = label.removesuffix(".py").split("/")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


class _Insertions:
    """Collects (line, byte column, order, text): openings before the expression they wrap, closings after it.
    Walks the tree with its own stack: a module nested as deep as Python compiles is no deeper for us."""

    def __init__(self, facts: NameFacts, lines: list[bytes], label: str, loops: bool, hook: str, first_iterations: bool) -> None:
        self.hook = hook
        self.facts = facts
        self.lines = lines
        self.label = label
        self.loops = loops
        self.first_iterations = first_iterations
        self.counters = 0  # loop counters made so far (their names: `<hook>i<n>`, free since the hook's name is)
        self.insertions: list[tuple[int, int, tuple, bytes]] = []

    def _wrap(self, node: ast.expr, opening: str, closing: str) -> None:
        start, end = (node.lineno, node.col_offset), (node.end_lineno, node.end_col_offset)
        # At one position: closings first (the expressions ending there), then openings, the outermost first.
        self.insertions.append((*start, (1, -end[0], -end[1]), opening.encode()))
        self.insertions.append((*end, (0, -start[0], -start[1]), closing.encode()))

    def _site(self, line: int, col: int) -> str:
        return f'"{self.label}:{line}:{col}"'

    def visit(self, tree: ast.AST) -> None:
        stack = [(tree, ())]  # (node, the loop counters of the `for` loops around it in its own scope)
        while stack:
            node, counters = stack.pop()
            if isinstance(node, ast.JoinedStr):
                continue  # a site string cannot go inside an f-string (3.11 forbids reusing its quotes there)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and self._torchscript(node):
                continue  # TorchScript compiles these bodies from their source: left as written
            inner = counters
            if isinstance(node, ast.Call):
                self._call(node, counters)
            elif isinstance(node, ast.For):
                self._loop(node, "loop", node.iter)
                if self.first_iterations and not self.loops:
                    inner = (*counters, self._count(node))
            elif isinstance(node, ast.While):
                self._loop(node, "cond", node.test)
            elif isinstance(node, _SCOPES):
                inner = ()
            children = list(ast.iter_child_nodes(node))
            if inner is not counters:  # a counted loop: only its body counts; its target, iterable and else do not
                body = {id(stmt) for stmt in node.body} if isinstance(node, ast.For) else set()
                stack.extend((child, inner if id(child) in body or not isinstance(node, ast.For) else counters)
                             for child in reversed(children))  # fmt: skip
            else:
                stack.extend((child, counters) for child in reversed(children))

    def _count(self, node: ast.For) -> str:
        """Number the loop's iterations: `for x in it:` -> `for <hook>i<n>, (x) in enumerate(it):`."""
        self.counters += 1
        name = f"{self.hook}i{self.counters}"
        self._wrap(node.target, f"{name}, (", ")")
        self._wrap(node.iter, "enumerate(", ")")
        return name

    def _torchscript(self, node) -> bool:
        for dec in node.decorator_list:
            target = dec.func if isinstance(dec, ast.Call) else dec
            name = ast_dotted_name(target) or ""
            if name.endswith(TORCHSCRIPT_DECORATORS) or name in ("script", "script_method"):
                return True
        return False

    def _call(self, node: ast.Call, counters: tuple[str, ...]) -> None:
        """`f(a)` -> `_tc_(site, f)(a)`; inside counted loops (`first_iterations`), `(f if <a counter> else
        _tc_(site, f))(a)`: the callee's text twice, of which one is evaluated, so later iterations call `f` as
        written, at the cost of a local's test (a single-tensor optimizer's per-parameter calls: the first parameter's
        are logged, the engine needs no more, and the changes to the others are recorded by the optimizer's check)."""
        if self._may_be_api(node.func):
            col = len(self.lines[node.lineno - 1][: node.col_offset].decode("utf-8", "replace"))
            func = node.func
            hooked = f"{self.hook}({self._site(node.lineno, col)}, "
            if counters and func.lineno == func.end_lineno:
                text = self.lines[func.lineno - 1][func.col_offset : func.end_col_offset].decode("utf-8")
                self._wrap(func, f"({text} if {' or '.join(counters)} else {hooked}", "))")
            else:
                self._wrap(func, hooked, ")")

    def _may_be_api(self, callee: ast.expr) -> bool:
        if isinstance(callee, ast.Name):
            return not self.facts.skippable_name(callee.id)
        if isinstance(callee, ast.Attribute):
            base = callee.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.JoinedStr) or (isinstance(base, ast.Constant) and isinstance(base.value, (str, bytes))):
                return False  # "sep".join(...), "{}".format(...)
            if isinstance(base, ast.Name) and self.facts.skippable_base(base.id):
                return False
        return True

    def _loop(self, node, method: str, value: ast.expr) -> None:
        if self.loops and any(isinstance(n, ast.Call) for stmt in node.body for n in ast.walk(stmt)):
            self._wrap(value, f"{self.hook}.{method}({self._site(node.lineno, node.col_offset)}, (", "))")


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp,
           ast.GeneratorExp)  # fmt: skip


def _apply(lines: list[bytes], insertions: list[tuple[int, int, tuple, bytes]]) -> bytes:
    by_line: dict[int, list] = {}
    for line, col, order, text in insertions:
        by_line.setdefault(line, []).append((col, order, text))
    out = list(lines)
    for line, items in by_line.items():
        items.sort(key=lambda item: (item[0], item[1]))
        original = lines[line - 1]
        pieces, pos = [], 0
        for col, _, text in items:
            pieces += [original[pos:col], text]
            pos = col
        pieces.append(original[pos:])
        out[line - 1] = b"".join(pieces)
    return b"".join(out)
