# expect-exit: 3
import sys

import torch


def finish():
    try:
        raise KeyError("inner")
    except KeyError:
        print("handled", torch.ones(1).item())
    finally:
        print("finally runs")
        sys.exit(3)


finish()
print("never printed")
