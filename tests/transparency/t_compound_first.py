# expect-exit: 0
# A script whose first code line is a compound statement.

if True:
    import torch
    print(torch.ones(2).sum().item())
