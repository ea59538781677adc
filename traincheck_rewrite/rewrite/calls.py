"""Wrap call sites so the runtime can log the ones that reach an instrumented API.

`f(a, b=c)` becomes `_tc_(7, f)(a, b=c)`: only the callee expression is wrapped, so the arguments keep their text,
their lines, their evaluation order and their laziness (a generator argument stays a generator). At run time
`_tc_(site, f)` returns `f` itself when `f` is not an instrumented API (the call then happens in the user's frame,
exactly as before) and a logging wrapper when it is.
"""

from __future__ import annotations

import libcst as cst

from .dispatch import Transformer
from .names import TORCHSCRIPT_DECORATORS, NameFacts, dotted_name
from .nesting import Nesting
from .positions import Span
from .results import SiteTable



def _is_torchscript_decorated(decorators) -> bool:
    for dec in decorators:
        target = dec.decorator.func if isinstance(dec.decorator, cst.Call) else dec.decorator
        name = dotted_name(target) or ""
        if name.endswith(TORCHSCRIPT_DECORATORS) or name in ("script", "script_method"):
            return True
    return False


class CallWrapper(Transformer):
    """Wraps every call whose callee might be an instrumented API; collects the spans of the wrapped sites.

    Site ids start after `site_base`; the caller registers `wrapped` in a SiteTable once the file succeeded.
    (Library modules are rewritten by library.py, by the same rules.)
    """

    def __init__(
        self,
        facts: NameFacts,
        spans: list[Span],
        site_base: int,
        hook: cst.BaseExpression,
        hook_has_quotes: bool,
        nesting: Nesting | None = None,
        paired: bool = True,
    ):
        super().__init__()
        # A deeply nested file: wrap only where the result still compiles (nesting.py); `added` is how many wrapped
        # callees enclose the node being visited.
        self.nesting = nesting
        self.nesting_paired = paired  # Nesting lists calls in `ast` order: of no use where that order is not libcst's
        self.added = 0
        self.decided: dict[int, bool] = {}  # id(original Call) -> wrap it
        # A string literal cannot go inside an f-string (3.11 forbids reusing its quotes there).
        self.hook_has_quotes = hook_has_quotes
        self.fstring_depth = 0
        self.site_base = site_base
        self.facts = facts
        self.spans = spans
        self.hook = hook
        self.frozen_depth = 0
        self.visited = 0
        self.order: dict[int, int] = {}  # id(original Call) -> index into spans
        self.wrapped: list[Span] = []  # in site order
        self.mismatch = False

    # Code whose text is observable stays as written: TorchScript compiles these bodies from their source, and
    # f"{expr=}" prints the expression's text.
    def visit_FormattedStringExpression(self, node: cst.FormattedStringExpression) -> None:
        if node.equal is not None:
            self.frozen_depth += 1

    def leave_FormattedStringExpression(self, original_node, updated_node):
        if original_node.equal is not None:
            self.frozen_depth -= 1
        return updated_node

    def visit_FormattedString(self, node: cst.FormattedString) -> None:
        self.fstring_depth += 1

    def leave_FormattedString(self, original_node, updated_node):
        self.fstring_depth -= 1
        return updated_node

    def visit_FunctionDef(self, node: cst.FunctionDef) -> None:
        if _is_torchscript_decorated(node.decorators):
            self.frozen_depth += 1

    def leave_FunctionDef(self, original_node: cst.FunctionDef, updated_node: cst.FunctionDef) -> cst.FunctionDef:
        if _is_torchscript_decorated(original_node.decorators):
            self.frozen_depth -= 1
        return updated_node

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        if _is_torchscript_decorated(node.decorators):
            self.frozen_depth += 1

    def leave_ClassDef(self, original_node: cst.ClassDef, updated_node: cst.ClassDef) -> cst.ClassDef:
        if _is_torchscript_decorated(original_node.decorators):
            self.frozen_depth -= 1
        return updated_node

    def _may_be_api(self, callee: cst.BaseExpression) -> bool:
        if isinstance(callee, cst.Name):
            return not self.facts.skippable_name(callee.value)
        if isinstance(callee, cst.Attribute):
            base = callee.value
            while isinstance(base, cst.Attribute):
                base = base.value
            if isinstance(base, (cst.SimpleString, cst.ConcatenatedString, cst.FormattedString)):
                return False  # "sep".join(...), "{}".format(...)
            if isinstance(base, cst.Name) and self.facts.skippable_base(base.value):
                return False
        return True

    def visit_Call(self, node: cst.Call) -> None:
        index = self.order[id(node)] = self.visited
        self.visited += 1
        wrap = not self.frozen_depth and not (self.fstring_depth and self.hook_has_quotes) and self._may_be_api(node.func)
        if wrap and self.nesting is not None:
            room = self.nesting.calls[index] if self.nesting_paired and index < len(self.nesting.calls) else None
            wrap = room is not None and not self.fstring_depth and self.nesting.allows(room, self.added, 6 if self.hook_has_quotes else 1)
        self.decided[id(node)] = wrap

    def visit_Call_func(self, node: cst.Call) -> None:
        self.added += self.decided[id(node)]

    def leave_Call_func(self, node: cst.Call) -> None:
        self.added -= self.decided[id(node)]

    def leave_Call(self, original_node: cst.Call, updated_node: cst.Call) -> cst.Call:
        if not self.decided[id(original_node)]:
            return updated_node
        index = self.order[id(original_node)]
        span = self.spans[index] if index < len(self.spans) else None
        if span is None or span.callee != dotted_name(original_node.func):
            self.mismatch = True
            return updated_node
        self.wrapped.append(span)
        wrapped_callee = cst.Call(
            func=self.hook,
            args=[
                cst.Arg(cst.Integer(str(self.site_base + len(self.wrapped))), comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))),
                cst.Arg(updated_node.func),
            ],
        )
        return updated_node.with_changes(func=wrapped_callee)
