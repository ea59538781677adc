# expect-exit: 0
import torch

x = torch.tensor([1.5, 2.5])
print(f"{torch.sum(x).item():.3f} {x.mean().item()!r} {'nested'} {x.tolist()}")
print(f"{torch.max(x).item()=}")
print(f'''{torch.min(x).item():>{int(torch.tensor(8).item())}}|''')
print(f"{f'{torch.numel(x)}'}")
