# expect-exit: 0
import torch

torch.manual_seed(0)

model = torch.nn.Linear(2, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for i in range(4):
    x = torch.full((1, 2), float(i))
    if torch.sum(x) > 4:
        print(i, "big")
    elif model(x).sum().backward() is None and opt.step() is None and i % 2:
        print(i, "stepped, odd")
    elif torch.equal(x, torch.zeros(1, 2)):
        print(i, "zero")
    else:
        print(i, "other")
print([round(v, 6) for v in model.weight.flatten().tolist()])
