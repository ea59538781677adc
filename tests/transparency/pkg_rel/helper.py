import torch


def f(x):
    return torch.mul(x, 3)


def g():
    return torch.ones(2).sum().item()
