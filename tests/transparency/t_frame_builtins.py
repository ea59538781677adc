# expect-exit: 0
import torch


def inspect_frame(a, b=2):
    local_names = sorted(locals())
    v = vars()
    return local_names, sorted(v), eval("a + b"), "torch" in globals()


print(inspect_frame(1))
ns = {"torch": torch}
exec("y = torch.ones(2).sum().item()", ns)
print(ns["y"], sorted(k for k in dir() if not k.startswith("_")))
