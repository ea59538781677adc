# expect-exit: 0
"""Docstring of the introspection script."""
import gc
import inspect
import os

import torch

print(__doc__)
print(os.path.basename(__file__), __name__)
print("line", inspect.currentframe().f_lineno)


def where():
    return inspect.currentframe().f_back.f_lineno


print("called from", where(), torch.ones(1).item())
print("defined at", where.__code__.co_firstlineno)
print("collector", gc.isenabled(), gc.get_threshold())  # the tool tunes its own process's, never the program's
