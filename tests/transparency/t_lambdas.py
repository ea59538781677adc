# expect-exit: 0
import torch

square = lambda t: torch.mul(t, t)
shift = lambda t, by=torch.ones(1): t + by
apply_all = lambda fs, t: [f(t).tolist() for f in fs]
print(apply_all([square, shift, lambda t: torch.neg(t)], torch.arange(3.0)))
print(sorted([torch.tensor(3.0), torch.tensor(1.0)], key=lambda t: t.item()))
