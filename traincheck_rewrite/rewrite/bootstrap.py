"""Insert the runtime import without moving any original line.

The import must run before the first wrapped call, after the module docstring (so `__doc__` is kept) and after
`from __future__` imports (which must come first). It is placed, in order of preference:

1. at the end of the line of the last `__future__` import, or of the docstring: `"Doc."; import ...`;
2. in front of the first statement when that is a simple statement: `import ...; import torch`, or in front of the
   first statement of a leading `try:` block;
3. on a blank line before the first statement.

Otherwise (the file's first code line is a compound statement with nothing but comments before it) there is no
line to share, and the call hook is spelled `__import__(...).lazy`, which attaches itself on first use.
"""

from __future__ import annotations

import re

import libcst as cst

from .names import HOOK

_CODING = re.compile(r"^[ \t\f]*#.*?coding[:=]")

BOOT_MODULE = "traincheck_rewrite.runtime.boot"
LAZY_HOOK_SOURCE = f'__import__("{BOOT_MODULE}", fromlist=("lazy",)).lazy'
# Present in every file this package rewrote (the idempotence marker), whatever hook name the file got.
_MARKER = re.compile(rf"\b({HOOK}(?:\d+_)?) = \1boot\.attach\(__file__\)")


def marker(hook: str) -> str:
    """`_tc_ = _tc_boot.attach(__file__)`: binds the hook; the module alias is the hook's name + "boot"."""
    return f"{hook} = {hook}boot.attach(__file__)"


MARKER = marker(HOOK)  # the usual one


def is_instrumented(source: str) -> bool:
    return _MARKER.search(source) is not None or LAZY_HOOK_SOURCE in source


def _boot_statements(hook: str) -> list[cst.BaseSmallStatement]:
    parsed = cst.parse_statement(f"import {BOOT_MODULE} as {hook}boot; {marker(hook)}\n")
    assert isinstance(parsed, cst.SimpleStatementLine)
    return list(parsed.body)


_SEMI = cst.Semicolon(whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace(" "))


def _is_docstring(stmt: cst.CSTNode) -> bool:
    return (
        isinstance(stmt, cst.SimpleStatementLine)
        and len(stmt.body) == 1
        and isinstance(stmt.body[0], cst.Expr)
        and isinstance(stmt.body[0].value, (cst.SimpleString, cst.ConcatenatedString))
    )


def _is_future_import(stmt: cst.CSTNode) -> bool:
    return (
        isinstance(stmt, cst.SimpleStatementLine)
        and bool(stmt.body)
        and all(
            isinstance(s, cst.ImportFrom) and isinstance(s.module, cst.Name) and s.module.value == "__future__"
            for s in stmt.body
        )
    )


def _append(line: cst.SimpleStatementLine, hook: str) -> cst.SimpleStatementLine:
    body = list(line.body)
    body[-1] = body[-1].with_changes(semicolon=_SEMI)
    boot = _boot_statements(hook)
    return line.with_changes(body=body + boot)


def _prepend(line: cst.SimpleStatementLine, hook: str) -> cst.SimpleStatementLine:
    boot = _boot_statements(hook)
    boot[-1] = boot[-1].with_changes(semicolon=_SEMI)
    return line.with_changes(body=boot + list(line.body))


def insert_bootstrap(module: cst.Module, hook: str) -> cst.Module | None:
    """The module with the runtime import (binding `hook`) inserted, or None when no line can take it (use the lazy
    hook)."""
    body = list(module.body)
    anchor = -1
    if body and _is_docstring(body[0]):
        anchor = 0
    while anchor + 1 < len(body) and _is_future_import(body[anchor + 1]):
        anchor += 1
    if anchor >= 0:
        body[anchor] = _append(body[anchor], hook)
        return module.with_changes(body=body)
    if not body:
        return None
    first = body[0]
    if isinstance(first, cst.SimpleStatementLine):
        body[0] = _prepend(first, hook)
        return module.with_changes(body=body)
    if (  # `try:` has no header to evaluate: its body's first line runs first (libraries start so)
        isinstance(first, cst.Try)
        and isinstance(first.body, cst.IndentedBlock)
        and isinstance(first.body.body[0], cst.SimpleStatementLine)
    ):
        inner = [_prepend(first.body.body[0], hook), *first.body.body[1:]]
        body[0] = first.with_changes(body=first.body.with_changes(body=inner))
        return module.with_changes(body=body)
    # A blank line in the header (after any shebang/coding lines, which are comments) or before the first statement.
    lines = list(module.header) + list(first.leading_lines)
    # A coding cookie on line 2 only counts while line 1 holds no code.
    cookie = any(line.comment is not None and _CODING.match(line.comment.value) for line in lines[:2])
    for i in range(len(lines) - 1, 1 if cookie else -1, -1):
        if lines[i].comment is None:
            boot_line = cst.SimpleStatementLine(body=_boot_statements(hook))
            header, leading = lines[:i], lines[i + 1 :]
            return module.with_changes(
                header=header, body=[boot_line, first.with_changes(leading_lines=leading)] + body[1:]
            )
    return None
