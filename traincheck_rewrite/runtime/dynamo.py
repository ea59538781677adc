"""Keep dynamo out of the recorder's frames, so that torch.compile sees what it sees in the plain run.

Inside a compiled function dynamo traces `_tc_(site, fn)(...)` and folds `torch.compiler.is_compiling()` to true:
the graph holds the plain call. But where dynamo gives up on a frame (a graph break inside a loop: "skipping the
frame and falling back to eager"), the frame runs eagerly and dynamo is asked about every Python frame it calls.
In the plain run a call like `x.sum()` there makes no frame; in ours the wrapper the hook hands back (`logged`, or
`numbered` for an API no `--invariants` names) is one, dynamo traced it, found the C method inside and warned
("Dynamo does not know how to trace the builtin ... Tensor.sum"), with graphs and graph breaks the plain run never
has.

So, once torch._dynamo is imported, every code object of the runtime is marked for dynamo's frame callback: skip
it, and everything it calls (the recorder's own work, which may call torch); except the frames that stand between
the program and the callee or its iterable (the wrappers, the loop markers' generators), which are skipped
themselves while what they call is left to dynamo, as in the plain run.
"""

from __future__ import annotations

import sys
import types

DYNAMO_MODULE = "torch._dynamo.eval_frame"
RUNTIME_PACKAGE = "traincheck_rewrite.runtime."
# (module, function) whose callees are the program's: the callee of a logged call, the iterable of a marked loop.
PASS_THROUGH = {
    ("logged_importlib_bootstrap", "logged"),
    ("logged_importlib_bootstrap", "_logged_general"),
    ("logged_importlib_bootstrap", "numbered"),
    ("recorder", "_iterations"),
    ("recorder", "_registered"),
}


def install() -> None:
    """Mark the runtime's frames now if dynamo is imported, else as soon as it is."""
    from .after_import import after_import

    after_import(DYNAMO_MODULE, _mark)


def _mark(eval_frame) -> None:
    from torch._C._dynamo.eval_frame import set_code_exec_strategy
    from torch._dynamo.types import FrameAction, FrameExecStrategy

    skip = FrameExecStrategy(FrameAction.SKIP, FrameAction.SKIP)
    only_itself = FrameExecStrategy(FrameAction.SKIP, FrameAction.DEFAULT)
    for name, module in list(sys.modules.items()):
        if not name.startswith(RUNTIME_PACKAGE) or module is None:
            continue
        short = name[len(RUNTIME_PACKAGE):]
        for code in _codes(module):
            set_code_exec_strategy(code, only_itself if (short, code.co_name) in PASS_THROUGH else skip)


def _codes(module: types.ModuleType):
    """Every code object defined in `module`: its functions, its classes' methods, and what they define inside."""
    seen: set[int] = set()
    stack = []
    for value in vars(module).values():
        values = vars(value).values() if isinstance(value, type) and value.__module__ == module.__name__ else (value,)
        for item in values:
            item = getattr(item, "__func__", item)  # classmethod, staticmethod
            code = getattr(item, "__code__", None)
            if isinstance(code, types.CodeType) and getattr(item, "__module__", None) == module.__name__:
                stack.append(code)
    while stack:
        code = stack.pop()
        if id(code) in seen:
            continue
        seen.add(id(code))
        yield code
        stack.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
