"""Deeply nested programs: the rewrite works on everything CPython compiles, whatever its nesting.

Two limits are ours to respect. Our own: libcst parses and visits recursively (a chain of 80 method calls already
passes Python's default recursion limit), so the rewrite runs in a thread with a large stack and a high recursion
limit (`run_deep`). CPython's, in the program that runs the rewritten code: the tokenizer allows 200 nested
brackets, and the compiler about 3 x the recursion limit nested expressions (`compile()` of a 1,500-link method chain
or a 3,000-term sum fails). Wrapping a call's callee (`_tc_(7, x.f)(a)`) nests that callee one bracket and one
expression deeper, so in a method chain `x.a().b().c()` every link adds one level. A file whose rewrite would nest
more than `SAFE_DEPTH` (or more than the file itself does) is rewritten again with `Nesting` limits: a call, or a
loop marker, is only added where it keeps the brackets within 200 and the expressions within the budget; the calls
left out are not logged.
"""

from __future__ import annotations

import ast
import io
import sys
import threading
import tokenize
import warnings
from bisect import bisect_left
from dataclasses import dataclass

BRACKET_LIMIT = 200  # the tokenizer's MAXLEVEL: "too many nested parentheses" beyond it
# Expression nesting the rewrite may reach even where the file itself nests less: compiles wherever the compiler is
# called fewer than ~330 Python frames deep (its budget is 3 x (recursion limit - depth); imports run a few dozen).
SAFE_DEPTH = 2000
_STACK_BYTES = 512 * 1024 * 1024
_DEEP_RECURSION_LIMIT = 1_000_000


def run_deep(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` in a thread with a large stack and a high recursion limit; `default_limit()` inside it
    is the limit the caller had. Runs in the caller's thread where no such thread can be started."""
    outcome: dict = {}

    def target() -> None:
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the caller
            outcome["error"] = exc

    global _default_limit
    previous_limit = _default_limit = sys.getrecursionlimit()
    try:
        previous_size = threading.stack_size(_STACK_BYTES)
    except (ValueError, RuntimeError):
        return fn(*args, **kwargs)
    try:
        thread = threading.Thread(target=target, name="traincheck_rewrite rewrite")
        sys.setrecursionlimit(max(previous_limit, _DEEP_RECURSION_LIMIT))
        try:
            thread.start()
        except RuntimeError:  # no memory for the stack: as deep as the caller's thread allows
            sys.setrecursionlimit(previous_limit)
            return fn(*args, **kwargs)
        thread.join()
    finally:
        threading.stack_size(previous_size)
        sys.setrecursionlimit(previous_limit)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


_default_limit = sys.getrecursionlimit()


def _frame_depth() -> int:
    depth, frame = 0, sys._getframe()
    while frame is not None:
        depth, frame = depth + 1, frame.f_back
    return depth


def compile_within(source, filename: str, depth: int | None = None, quiet: bool = False):
    """`compile(source)` as if called from the top of a fresh interpreter (budget 3 x the default recursion limit),
    or with a budget of `depth` nested expressions; raises what compile raises. `quiet`: no SyntaxWarning shown (a
    trial compile; the final one shows them once)."""
    budget_frames = -(-depth // 3) if depth is not None else _default_limit
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(_frame_depth() + budget_frames)
    try:
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
            return compile(source, filename, "exec", dont_inherit=True)
    finally:
        sys.setrecursionlimit(previous)


NESTING_ERRORS = (RecursionError, MemoryError, SyntaxError)  # SyntaxError: "too many nested parentheses"


@dataclass(frozen=True)
class Room:
    """How deep an expression already nests: its deepest expression level and bracket level, start included."""

    depth: int
    brackets: int


class Nesting:
    """Where the rewrite may nest deeper: the `Room` of each call's callee and each loop's iterable or condition."""

    def __init__(self, tree: ast.Module, text: str) -> None:
        deepest = _deepest_levels(tree)
        self.budget = max(deepest[id(tree)], SAFE_DEPTH)
        self._brackets = _BracketLevels(text)
        lines = text.encode("utf-8", "surrogatepass").splitlines(keepends=True)
        self._lines = lines
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)]
        calls.sort(key=lambda n: (n.lineno, n.col_offset, -n.end_lineno, -n.end_col_offset))  # as positions.call_spans
        self.calls = [self._room(n.func, deepest) for n in calls]
        loops = [n for n in ast.walk(tree) if isinstance(n, (ast.For, ast.AsyncFor, ast.While))]
        loops.sort(key=lambda n: (n.lineno, n.col_offset))  # as loops.loop_spans
        self.loops = [self._room(n.test if isinstance(n, ast.While) else n.iter, deepest) for n in loops]

    def _char_pos(self, line: int, byte_col: int) -> tuple[int, int]:
        return line, len(self._lines[line - 1][:byte_col].decode("utf-8", "replace"))

    def _room(self, node: ast.expr, deepest: dict[int, int]) -> Room:
        start = self._char_pos(node.lineno, node.col_offset)
        end = self._char_pos(node.end_lineno, node.end_col_offset)
        return Room(deepest[id(node)], self._brackets.highest(start, end))

    def allows(self, room: Room, added: int, cost: int = 1) -> bool:
        """Whether `cost` more levels around an expression already `added` levels deeper than written still compile."""
        return room.depth + added + cost <= self.budget and room.brackets + added + cost <= BRACKET_LIMIT


def _deepest_levels(tree: ast.Module) -> dict[int, int]:
    """id(node) -> the deepest expression/statement level within it, counted from the module as the compiler counts
    its recursion (one level per expression and statement). Iterative: works at any depth."""
    nodes: list[ast.AST] = []
    parents: list[int] = []
    levels: list[int] = []
    stack: list[tuple[ast.AST, int, int]] = [(tree, -1, 0)]
    while stack:
        node, parent, level = stack.pop()
        if isinstance(node, (ast.expr, ast.stmt)):
            level += 1
        index = len(nodes)
        nodes.append(node)
        parents.append(parent)
        levels.append(level)
        stack.extend((child, index, level) for child in ast.iter_child_nodes(node))
    deepest = list(levels)
    for index in range(len(nodes) - 1, 0, -1):  # children come after their parent
        parent = parents[index]
        if deepest[index] > deepest[parent]:
            deepest[parent] = deepest[index]
    return {id(node): deepest[i] for i, node in enumerate(nodes)}


def deepest_line(tree: ast.Module) -> int:
    """The line of the most deeply nested expression (for an error message)."""
    best, line = 0, 1
    stack: list[tuple[ast.AST, int]] = [(tree, 0)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, (ast.expr, ast.stmt)):
            level += 1
            if level > best:
                best, line = level, node.lineno
        stack.extend((child, level) for child in ast.iter_child_nodes(node))
    return line


class _BracketLevels:
    """The tokenizer's bracket level through the text: after each bracket, and the highest one within a span."""

    def __init__(self, text: str) -> None:
        self.positions: list[tuple[int, int]] = []
        self.levels: list[int] = []
        level = 0
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.OP and tok.string in ("(", "[", "{"):
                level += 1
            elif tok.type == tokenize.OP and tok.string in (")", "]", "}"):
                level -= 1
            else:
                continue
            self.positions.append(tok.start)
            self.levels.append(level)

    def highest(self, start: tuple[int, int], end: tuple[int, int]) -> int:
        i = bisect_left(self.positions, start)
        j = bisect_left(self.positions, end)
        at_start = self.levels[i - 1] if i else 0
        return max(at_start, max(self.levels[i:j], default=0))
