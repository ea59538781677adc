"""Original positions and text of call sites, from Python's own `ast` (much cheaper than libcst's PositionProvider).

libcst visits calls in source order (pre-order); sorting the `ast` calls by start, outermost first, gives the same
order, so the k-th call libcst visits is the k-th call here. `CallWrapper` checks each pairing by callee name and
falls back to libcst's PositionProvider for a file where any pairing disagrees.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from .dispatch import Visitor
from .names import ast_dotted_name, dotted_name

MAX_TEXT = 200


@dataclass(frozen=True)
class Span:
    line: int
    col: int  # 0-based, in characters
    end_line: int
    end_col: int
    text: str
    callee: str | None  # dotted name of the callee when it is a Name/Attribute chain


def call_spans(tree: ast.Module, text: str) -> list[Span]:
    """Spans of every call in `tree`, parsed from `text`, in libcst's visiting order."""
    lines = text.encode("utf-8", "surrogatepass").splitlines(keepends=True)  # ast offsets are UTF-8 bytes
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
    calls.sort(key=lambda n: (n.lineno, n.col_offset, -n.end_lineno, -n.end_col_offset))
    spans = []
    for n in calls:
        first = lines[n.lineno - 1]
        if n.lineno == n.end_lineno:
            raw = first[n.col_offset : n.end_col_offset]
        else:
            raw = first[n.col_offset :] + b"".join(lines[n.lineno : n.end_lineno - 1]) + lines[n.end_lineno - 1][: n.end_col_offset]
        snippet = raw.decode("utf-8", "replace")
        if len(snippet) > MAX_TEXT:
            snippet = snippet[: MAX_TEXT - 3] + "..."
        col = len(first[: n.col_offset].decode("utf-8", "replace"))
        end_col = len(lines[n.end_lineno - 1][: n.end_col_offset].decode("utf-8", "replace"))
        spans.append(Span(n.lineno, col, n.end_lineno, end_col, snippet, ast_dotted_name(n.func)))
    return spans


class _CstSpans(Visitor):
    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, module: cst.Module) -> None:
        super().__init__()
        self.module = module
        self.spans: list[Span] = []

    def visit_Call(self, node: cst.Call) -> None:
        pos = self.get_metadata(PositionProvider, node)
        snippet = self.module.code_for_node(node)
        if len(snippet) > MAX_TEXT:
            snippet = snippet[: MAX_TEXT - 3] + "..."
        self.spans.append(Span(pos.start.line, pos.start.column, pos.end.line, pos.end.column, snippet, dotted_name(node.func)))


def cst_call_spans(module: cst.Module) -> list[Span]:
    """The same spans from libcst's own PositionProvider: slow, used only where `call_spans` cannot be paired."""
    visitor = _CstSpans(module)
    MetadataWrapper(module, unsafe_skip_copy=True).visit(visitor)
    return visitor.spans
