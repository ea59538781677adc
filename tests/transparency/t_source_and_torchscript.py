# expect-exit: 0
"""What a program reads of its own source: inspect.getsource, formatted tracebacks, TorchScript of its modules."""
import inspect
import traceback

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 4)

    def forward(self, x):
        return F.relu(self.linear(x)) + torch.ones_like(x)


def scale(x):
    return torch.mul(x, 2.0)


torch.manual_seed(0)
block = Block()
scripted = torch.jit.script(block)  # compiles forward from its source text
x = torch.randn(2, 4)
print(torch.equal(scripted(x), block(x)), torch.jit.script(scale)(x).sum().item() == scale(x).sum().item())
print(inspect.getsource(scale))
print(inspect.getsource(Block.forward))
try:
    torch.matmul(torch.ones(2, 3), torch.ones(2, 3))
except RuntimeError:
    print([line for line in traceback.format_exc().splitlines() if "matmul" in line][0])
