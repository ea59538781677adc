# expect-exit: 0
import torch


def noisy(n):
    for i in range(n):
        print("yield", i)
        yield torch.tensor(float(i))


def consume_two(gen):
    print("consume starts")
    first = next(gen)
    print("got first")
    return first + next(gen)


print(consume_two(noisy(5)).item())
print(sum(t * 2 for t in noisy(3)).item())
print(torch.stack(list(t for t in noisy(2))).tolist())
