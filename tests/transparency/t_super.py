# expect-exit: 0
import torch
import torch.nn as nn


class Base(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc = nn.Linear(width, width)

    def forward(self, x):
        return self.fc(x)


class Child(Base):
    def __init__(self):
        super().__init__(3)
        self.extra = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return super().forward(x) * self.extra


torch.manual_seed(0)
m = Child()
print(round(m(torch.ones(1, 3)).sum().item(), 6), [n for n, _ in m.named_parameters()])
