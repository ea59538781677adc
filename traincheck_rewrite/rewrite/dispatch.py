"""libcst's transformer and visitor with their `visit_<Node>` / `leave_<Node>` methods looked up once per node type.

libcst builds the method's name and looks it up on every node it visits, twice more for each of the node's fields
(`visit_<Node>_<field>`): about a third of the time our transformers take on a large file. Here the look-ups are
cached per class and node type, and the field hooks are looked up only for the node types a class has such a hook
for. The behaviour is libcst's: the same methods are called, with the same arguments, in the same order.
"""

from __future__ import annotations

import libcst as cst


def _hooks(cls: type) -> tuple[dict, dict, dict, frozenset]:
    """The class's own hooks (libcst's typed base classes define a no-op for every name), and the node types that
    have a field hook."""
    own: dict = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith("libcst"):
            own.update((name, value) for name, value in vars(klass).items() if name.startswith(("visit_", "leave_")))
    field_hooks = frozenset(name.split("_")[1] for name in own if name.count("_") >= 2)
    return own, {}, {}, field_hooks


def _lookup(own: dict, cache: dict, prefix: str, node_type: type):
    try:
        return cache[node_type]
    except KeyError:
        method = cache[node_type] = own.get(prefix + node_type.__name__)
        return method


class Transformer(cst.CSTTransformer):
    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls._own, cls._visits, cls._leaves, cls._field_hooks = _hooks(cls)

    def on_visit(self, node: cst.CSTNode) -> bool:
        method = _lookup(self._own, self._visits, "visit_", type(node))
        return method is None or method(self, node) is not False

    def on_leave(self, original_node, updated_node):
        method = _lookup(self._own, self._leaves, "leave_", type(original_node))
        return updated_node if method is None else method(self, original_node, updated_node)

    def on_visit_attribute(self, node: cst.CSTNode, attribute: str) -> None:
        if type(node).__name__ in self._field_hooks:
            super().on_visit_attribute(node, attribute)

    def on_leave_attribute(self, original_node: cst.CSTNode, attribute: str) -> None:
        if type(original_node).__name__ in self._field_hooks:
            super().on_leave_attribute(original_node, attribute)


class Visitor(cst.CSTVisitor):
    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls._own, cls._visits, cls._leaves, cls._field_hooks = _hooks(cls)

    def on_visit(self, node: cst.CSTNode) -> bool:
        method = _lookup(self._own, self._visits, "visit_", type(node))
        return method is None or method(self, node) is not False

    def on_leave(self, original_node: cst.CSTNode) -> None:
        method = _lookup(self._own, self._leaves, "leave_", type(original_node))
        if method is not None:
            method(self, original_node)

    def on_visit_attribute(self, node: cst.CSTNode, attribute: str) -> None:
        if type(node).__name__ in self._field_hooks:
            super().on_visit_attribute(node, attribute)

    def on_leave_attribute(self, original_node: cst.CSTNode, attribute: str) -> None:
        if type(original_node).__name__ in self._field_hooks:
            super().on_leave_attribute(original_node, attribute)
