"""Register tracked models (and variables captured as meta variables) right after every binding of their names, on
the binding's own line.

`model = Net()` becomes `model = Net(); _tc_.track("model", model)`, `epoch = 3` with `meta_from: {epoch: epoch}`
becomes `epoch = 3; _tc_.meta("epoch", epoch)`; `for model in models:` and function parameters
named `model` get the call in front of the first statement of their body (after a docstring). Bindings found, and
assignments that look like models (for the warning when a name matches nothing), are collected in `Bindings`.
"""

from __future__ import annotations

import libcst as cst
from libcst.metadata import PositionProvider

from .dispatch import Transformer
from .names import dotted_name
from .results import Bindings


def _looks_like_model(value: cst.BaseExpression, module_classes: set[str]) -> bool:
    if not isinstance(value, cst.Call):
        return False
    func = value.func
    if isinstance(func, cst.Call) and len(func.args) == 2 and isinstance(func.args[0].value, cst.Integer):
        func = func.args[1].value  # already wrapped: _tc_(<site>, nn.Sequential)(...)
    name = dotted_name(func) or ""
    last = name.rsplit(".", 1)[-1]
    return bool(last[:1].isupper()) and ("nn." in name or name.startswith("nn") or last in module_classes)


def _module_classes(module: cst.Module) -> set[str]:
    """Classes of this file that derive from something named like a Module."""
    out = set()
    for stmt in module.body:
        if isinstance(stmt, cst.ClassDef) and any("Module" in (dotted_name(b.value) or "") for b in stmt.bases):
            out.add(stmt.name.value)
    return out


_COMMA = cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
_SEMI = cst.Semicolon(whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace(" "))


class ModelTracker(Transformer):
    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, targets: dict[str, tuple[str, str]], hook: cst.BaseExpression, filename: str,
                 bindings: Bindings, module_classes: set[str]) -> None:
        super().__init__()
        self.targets = targets  # variable name -> (hook method, label): ("track", "model"), ("meta", "epoch")
        self.names = set(targets)
        self.leaf_names = {n for n in targets if "." not in n}
        self.hook = hook
        self.filename = filename
        self.bindings = bindings
        self.module_classes = module_classes

    def _match(self, target: cst.BaseExpression) -> list[tuple[str, cst.BaseExpression]]:
        """(tracked name, expression to pass) for each tracked binding inside an assignment target."""
        if isinstance(target, (cst.Tuple, cst.List)):
            return [m for el in target.elements for m in self._match(el.value)]
        if isinstance(target, cst.StarredElement):
            return self._match(target.value)
        name = dotted_name(target)
        if name is None:
            return []
        if name in self.names:
            return [(name, target)]
        if isinstance(target, cst.Attribute) and target.attr.value in self.leaf_names:  # self.model, trainer.model
            return [(target.attr.value, target)]
        return []

    def _track_call(self, name: str, target: cst.BaseExpression) -> cst.Expr:
        method, label = self.targets[name]
        return cst.Expr(
            cst.Call(
                func=cst.Attribute(self.hook, cst.Name(method)),
                args=[
                    cst.Arg(cst.SimpleString(f'"{label}"'), comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))),
                    cst.Arg(target.with_changes(lpar=[], rpar=[]) if isinstance(target, cst.Name) else target),
                ],
            )
        )

    def _found(self, name: str, node: cst.CSTNode) -> None:
        line = self.get_metadata(PositionProvider, node).start.line
        self.bindings.found.setdefault(name, []).append((self.filename, line))

    def leave_SimpleStatementLine(self, original_node, updated_node):
        body: list[cst.BaseSmallStatement] = []
        count = len(updated_node.body)
        for index, small in enumerate(updated_node.body):
            body.append(small)  # the binding keeps its text, its `;` included
            calls = self._calls_after(small, original_node)
            for i, call in enumerate(calls):
                last_on_line = index == count - 1 and i == len(calls) - 1
                body.append(call if last_on_line else call.with_changes(semicolon=_SEMI))
        return updated_node.with_changes(body=body) if len(body) != count else updated_node

    def _calls_after(self, small: cst.BaseSmallStatement, line: cst.SimpleStatementLine) -> list[cst.Expr]:
        targets: list[cst.BaseExpression] = []
        value = None
        if isinstance(small, cst.Assign):
            targets, value = [t.target for t in small.targets], small.value
        elif isinstance(small, cst.AnnAssign) and small.value is not None:
            targets, value = [small.target], small.value
        elif isinstance(small, cst.AugAssign):
            targets = [small.target]
        calls = []
        for target in targets:
            matches = self._match(target)
            for name, expr in matches:
                self._found(name, line)
                calls.append(self._track_call(name, expr))
            if not matches and value is not None and _looks_like_model(value, self.module_classes):
                lineno = self.get_metadata(PositionProvider, line).start.line
                self.bindings.candidates.append((dotted_name(target) or "?", self.filename, lineno))
        return calls

    def _prefix_body(self, node, body, calls: list[cst.Expr]):
        """Put the calls on the first line of an indented block (after a docstring) or of a one-line suite."""
        if not calls:
            return body
        if isinstance(body, cst.SimpleStatementSuite):
            return body.with_changes(body=[*calls, *body.body])
        first = body.body[0]
        if not isinstance(first, cst.SimpleStatementLine):
            return body  # a compound first statement leaves no line to share
        is_doc = (
            isinstance(node, cst.FunctionDef)
            and len(first.body) == 1
            and isinstance(first.body[0], cst.Expr)
            and isinstance(first.body[0].value, (cst.SimpleString, cst.ConcatenatedString))
        )
        new_first = first.with_changes(body=[*first.body, *calls] if is_doc else [*calls, *first.body])
        return body.with_changes(body=[new_first, *body.body[1:]])

    def leave_For(self, original_node, updated_node):
        target = updated_node.target
        if isinstance(target, cst.Name) and target.value in self.names and original_node.asynchronous is None:
            # `for epoch in _tc_.each("meta", "epoch", it)`: each item is registered as it is bound, whatever the
            # loop body starts with
            self._found(target.value, original_node)
            method, label = self.targets[target.value]
            each = cst.Call(
                func=cst.Attribute(self.hook, cst.Name("each")),
                args=[cst.Arg(cst.SimpleString(f'"{method}"'), comma=_COMMA), cst.Arg(cst.SimpleString(f'"{label}"'), comma=_COMMA), cst.Arg(updated_node.iter)],
            )
            return updated_node.with_changes(iter=each)
        calls = []
        for name, expr in self._match(target):
            self._found(name, original_node)
            calls.append(self._track_call(name, expr))
        return updated_node.with_changes(body=self._prefix_body(updated_node, updated_node.body, calls))

    def leave_With(self, original_node, updated_node):
        calls = []
        for item in updated_node.items:
            if item.asname is not None:
                for name, expr in self._match(item.asname.name):
                    self._found(name, original_node)
                    calls.append(self._track_call(name, expr))
        return updated_node.with_changes(body=self._prefix_body(updated_node, updated_node.body, calls))

    def leave_FunctionDef(self, original_node, updated_node):
        calls = []
        params = updated_node.params
        for param in [*params.posonly_params, *params.params, *params.kwonly_params]:
            if param.name.value in self.leaf_names:
                self._found(param.name.value, original_node)
                calls.append(self._track_call(param.name.value, cst.Name(param.name.value)))
        return updated_node.with_changes(body=self._prefix_body(updated_node, updated_node.body, calls))


def track_models(module: cst.Module, targets: dict[str, tuple[str, str]], hook: cst.BaseExpression, filename: str,
                 bindings: Bindings) -> cst.Module:
    """Insert `_tc_.<method>("<label>", <variable>)` after each binding of each variable of `targets`."""
    from libcst.metadata import MetadataWrapper

    transformer = ModelTracker(targets, hook, filename, bindings, _module_classes(module))
    return MetadataWrapper(module, unsafe_skip_copy=True).visit(transformer)
