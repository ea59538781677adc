# expect-exit: 0
"""Module docstring, kept as __doc__."""
from __future__ import annotations
from __future__ import division

import torch


def f(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x)


print(__doc__)
print(f.__annotations__)
print(f(torch.tensor([-1.0, 1.0])).tolist())
