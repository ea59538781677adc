"""Mark loop iterations for the step counter: `for x in it:` -> `for x in _tc_.loop(<site>, it):`,
`while c:` -> `while _tc_.cond(<site>, c):`, on the loop's own line.

Only loops whose body makes a call are marked (a loop without calls cannot train); `async for` is left alone. (The
loops of a framework's training-loop module are marked by library.py, by the same rules.) The runtime learns which loop is the training loop from where optimizer steps happen (runtime/steps.py). Loop lines come
from `ast`, paired with libcst's visiting order as for calls (positions.py).
"""

from __future__ import annotations

import ast

import libcst as cst

from .dispatch import Transformer, Visitor
from .nesting import Nesting
from .positions import MAX_TEXT, Span


def loop_spans(tree: ast.Module, text: str) -> list[Span]:
    """Every for/while statement (async for included), in source order."""
    lines = text.splitlines()
    loops = [n for n in ast.walk(tree) if isinstance(n, (ast.For, ast.AsyncFor, ast.While))]
    loops.sort(key=lambda n: (n.lineno, n.col_offset))
    return [
        Span(n.lineno, n.col_offset, n.lineno, n.col_offset, lines[n.lineno - 1].strip()[:MAX_TEXT], None)
        for n in loops
    ]


class _HasCall(Visitor):
    def __init__(self) -> None:
        super().__init__()
        self.found = False

    def visit_Call(self, node: cst.Call) -> bool:
        self.found = True
        return False


def _body_calls(body: cst.BaseSuite) -> bool:
    finder = _HasCall()
    body.visit(finder)
    return finder.found


# The nodes a loop statement can be inside of: the visit goes down only these (expressions and simple statements hold
# no statement), sparing most of a file's nodes.
_HOLDS_STATEMENTS = (cst.Module, cst.IndentedBlock, cst.BaseCompoundStatement, cst.Else, cst.ExceptHandler,
                     cst.ExceptStarHandler, cst.Finally, cst.MatchCase)


class LoopMarker(Transformer):
    def __init__(self, hook: cst.BaseExpression, spans: list[Span], site_base: int, nesting: Nesting | None = None) -> None:
        super().__init__()
        self.nesting = nesting  # a deeply nested file: mark only loops whose marker still compiles (nesting.py)
        self.hook = hook
        self.spans = spans
        self.site_base = site_base
        self.visited = 0
        self.order: dict[int, int] = {}
        self.marked: list[Span] = []

    def on_visit(self, node: cst.CSTNode) -> bool:
        return isinstance(node, _HOLDS_STATEMENTS) and super().on_visit(node)

    def visit_For(self, node: cst.For) -> None:
        self.order[id(node)] = self.visited
        self.visited += 1

    def visit_While(self, node: cst.While) -> None:
        self.order[id(node)] = self.visited
        self.visited += 1

    def _marked(self, method: str, original: cst.CSTNode, value: cst.BaseExpression) -> cst.Call:
        self.marked.append(self.spans[self.order[id(original)]])
        return cst.Call(
            func=cst.Attribute(self.hook, cst.Name(method)),
            args=[
                cst.Arg(cst.Integer(str(self.site_base + len(self.marked))), comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))),
                cst.Arg(value),
            ],
        )

    def _room(self, original: cst.CSTNode) -> bool:
        """The marker (and a meta variable's `each` around it: two levels) keeps the loop header compilable."""
        nesting = self.nesting
        return nesting is None or nesting.allows(nesting.loops[self.order[id(original)]], 0, 2)

    def leave_For(self, original_node: cst.For, updated_node: cst.For) -> cst.For:
        if original_node.asynchronous is not None or not _body_calls(original_node.body) or not self._room(original_node):
            return updated_node
        return updated_node.with_changes(iter=self._marked("loop", original_node, updated_node.iter))

    def leave_While(self, original_node: cst.While, updated_node: cst.While) -> cst.While:
        if not _body_calls(original_node.body) or not self._room(original_node):
            return updated_node
        return updated_node.with_changes(test=self._marked("cond", original_node, updated_node.test))
