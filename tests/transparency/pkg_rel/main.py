# expect-exit: 0
# Run as `python -m pkg_rel.main` from tests/transparency.
import torch

from . import helper
from .helper import f

print(f(torch.ones(1)).item(), helper.g())
