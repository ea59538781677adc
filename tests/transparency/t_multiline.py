# expect-exit: 0
import torch

result = torch.cat(  # comment after the paren
    [
        torch.ones(1),  # first
        torch.zeros(1),
        # a comment line between arguments
        torch.full((1,), 7.0),
    ],
    dim=0,
)
value = (
    torch
    .arange(4)
    .sum()
    .item()
)
print(result.tolist(), value, torch.add(torch.ones(1),
                                        torch.ones(1),).item())
