# expect-exit: 0
import torch

xs = [torch.full((2,), float(i)) for i in range(4)]
print([x.sum().item() for x in xs if torch.all(x > 0)])
print({int(x[0].item()) for x in xs})
print({i: torch.mean(x).item() for i, x in enumerate(xs) if x.numel() == 2})
print(list(y.item() for x in xs for y in x if torch.ge(y, 2.0)))
print([[torch.add(a, b).item() for b in x] for a in xs[1] for x in xs[:2]])
