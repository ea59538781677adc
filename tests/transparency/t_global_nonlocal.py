# expect-exit: 0
import torch

counter = torch.zeros(1)


def bump():
    global counter
    counter = torch.add(counter, 1)


def make_acc():
    total = torch.zeros(1)

    def add(x):
        nonlocal total
        total = torch.add(total, x)
        return total.item()

    return add


for _ in range(3):
    bump()
acc = make_acc()
acc(torch.ones(1))
print(counter.item(), acc(torch.full((1,), 2.0)))
