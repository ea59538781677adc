# expect-exit: 0
import torch
from torch.nn import *

model = Sequential(Linear(2, 3), ReLU(), Linear(3, 1))
print(type(model).__name__, len(list(model.parameters())), abs(-3), len([1, 2]), max(1, 2))
print(model(torch.ones(1, 2)).shape)
