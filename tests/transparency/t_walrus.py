# expect-exit: 0
import torch

if (n := torch.arange(5).sum().item()) > 3:
    print("n", n)
total = 0
it = iter(range(6))
while (t := torch.tensor(float(next(it)))).item() < 4:
    total += t.item()
print("total", total)
print([y for x in range(5) if (y := torch.square(torch.tensor(x)).item()) % 2 == 0])
