"""libcst's transformer and visitor, with the per-node overhead of their visit taken out.

libcst builds a hook's name and looks it up on every node it visits, and twice more for each of the node's fields
(`visit_<Node>_<field>`); and it visits, rebuilds and re-validates every whitespace and punctuation node, more than
half of a file's nodes. Here the look-ups are cached per class and node type, the field hooks are looked up only for
the node types a class has one for, and the children of a node made only of whitespace and punctuation (a comma, a
name, an operator, a newline) are not visited unless the class has a hook for one of them. The result is libcst's:
the same hooks are called with the same arguments in the same order; a node whose children are not visited is
passed on as it is instead of rebuilt equal.
"""

from __future__ import annotations

import libcst as cst

# Nodes whose children (if any) are whitespace and punctuation only.
_BARE_BASES = (cst.BaseParenthesizableWhitespace, cst.BaseBinaryOp, cst.BaseBooleanOp, cst.BaseCompOp, cst.BaseUnaryOp,
               cst.BaseAugOp)  # fmt: skip
_BARE = (*_BARE_BASES, cst.TrailingWhitespace, cst.EmptyLine, cst.Newline, cst.Comment, cst.Dot, cst.Comma, cst.Colon,
         cst.Semicolon, cst.AssignEqual, cst.ImportStar, cst.LeftParen, cst.RightParen, cst.LeftSquareBracket,
         cst.RightSquareBracket, cst.LeftCurlyBrace, cst.RightCurlyBrace, cst.Name, cst.Integer, cst.Float,
         cst.Imaginary, cst.SimpleString, cst.Ellipsis)  # fmt: skip
_BARE_NAMES = frozenset(
    [t.__name__ for t in _BARE] + [sub.__name__ for base in _BARE_BASES for sub in base.__subclasses__()]
)


def _hooks(cls: type) -> tuple[dict, dict, dict, frozenset, bool]:
    """The class's own hooks (libcst's typed base classes define a no-op for every name), the node types with a
    field hook, and whether bare nodes' children may go unvisited."""
    own: dict = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith("libcst"):
            own.update((name, value) for name, value in vars(klass).items() if name.startswith(("visit_", "leave_")))
    hooked = {name.split("_")[1] for name in own}
    field_hooks = frozenset(name.split("_")[1] for name in own if name.count("_") >= 2)
    return own, {}, {}, field_hooks, not hooked & _BARE_NAMES


def _visit_hook(cls: type, node_type: type) -> tuple:
    """(the class's visit hook for the node type or None, whether to visit the node's children at all)."""
    try:
        return cls._visits[node_type]
    except KeyError:
        found = cls._visits[node_type] = (cls._own.get("visit_" + node_type.__name__),
                                          not (cls._skip_bare and issubclass(node_type, _BARE)))  # fmt: skip
        return found


def _leave_hook(cls: type, node_type: type):
    try:
        return cls._leaves[node_type]
    except KeyError:
        found = cls._leaves[node_type] = cls._own.get("leave_" + node_type.__name__)
        return found


class _Dispatch:
    """What the transformer and the visitor share; placed before libcst's class in their bases."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls._own, cls._visits, cls._leaves, cls._field_hooks, cls._skip_bare = _hooks(cls)

    def on_visit(self, node: cst.CSTNode) -> bool:
        method, children = _visit_hook(type(self), type(node))
        return (method is None or method(self, node) is not False) and children

    def on_visit_attribute(self, node: cst.CSTNode, attribute: str) -> None:
        if type(node).__name__ in self._field_hooks:
            super().on_visit_attribute(node, attribute)

    def on_leave_attribute(self, original_node: cst.CSTNode, attribute: str) -> None:
        if type(original_node).__name__ in self._field_hooks:
            super().on_leave_attribute(original_node, attribute)


class Transformer(_Dispatch, cst.CSTTransformer):
    def on_leave(self, original_node, updated_node):
        method = _leave_hook(type(self), type(original_node))
        return updated_node if method is None else method(self, original_node, updated_node)


class Visitor(_Dispatch, cst.CSTVisitor):
    def on_leave(self, original_node: cst.CSTNode) -> None:
        method = _leave_hook(type(self), type(original_node))
        if method is not None:
            method(self, original_node)
