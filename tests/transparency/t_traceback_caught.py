# expect-exit: 0
import os
import traceback

import torch


def inner(a, b):
    return torch.matmul(a, b)


def outer():
    return inner(torch.ones(2, 3), torch.ones(2, 3))


try:
    outer()
except RuntimeError as exc:
    print(type(exc).__name__, str(exc).splitlines()[0])
    frames = traceback.extract_tb(exc.__traceback__)
    print([(os.path.basename(f.filename), f.lineno, f.name) for f in frames if f.filename.endswith("t_traceback_caught.py")])
