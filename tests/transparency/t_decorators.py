# expect-exit: 0
import functools

import torch


def tagged(label):
    def wrap(fn):
        @functools.wraps(fn)
        def inner(*a, **k):
            return (label, fn(*a, **k))
        return inner
    return wrap


@torch.no_grad()
def grad_free(x):
    return (x * 2).requires_grad


@tagged("outer")
@tagged(str(torch.ones(1).item()))
def stacked(x):
    return torch.relu(x).sum().item()


w = torch.ones(2, requires_grad=True)
print(grad_free(w), stacked(torch.tensor([-1.0, 2.0])), stacked.__name__, stacked.__wrapped__.__name__)
