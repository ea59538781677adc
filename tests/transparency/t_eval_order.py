# expect-exit: 0
import torch


def loud(tag, value):
    print("eval", tag)
    return value


def target(*args, **kwargs):
    return len(args), sorted(kwargs)


print(torch.add(loud("a", torch.ones(1)), loud("b", torch.ones(1)), alpha=loud("alpha", 2)).item())
args = [loud("star", torch.ones(1)), torch.ones(1)]
kw = {"alpha": loud("kw", 3)}
print(torch.add(*args, **kw).item())
print(target(loud(1, 1), *[loud(2, 2)], k=loud(3, 3), **{"z": loud(4, 4)}))
