# expect-exit: 0
import torch


def describe(value):
    match value:
        case torch.Size([a, b]) if torch.tensor(a * b).item() > 4:
            return f"big matrix {a}x{b}"
        case torch.Size([n]):
            return f"vector {n}"
        case {"shape": (rows, *_)}:
            return f"mapping with {rows} rows"
        case [first, *rest] if torch.is_tensor(first):
            return f"list of {1 + len(rest)} starting with a tensor"
        case _:
            return "other"


for v in (torch.ones(3, 2).shape, torch.ones(4).shape, {"shape": (7, 1)}, [torch.ones(1), 2], 5):
    print(describe(v))
