def main():
    import torch
    return torch.arange(4).sum().item()
# expect-exit: 0 (the marker may stand on any of the first lines; this file must start with a def)
print(main())
