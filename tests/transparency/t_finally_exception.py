# expect-exit: 1
import torch


def cleanup():
    raise RuntimeError("cleanup failed")


def main():
    try:
        torch.ones(2).view(3)
    finally:
        print("in finally", torch.zeros(1).item())
        cleanup()


main()
