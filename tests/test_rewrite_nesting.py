"""Programs nested as deeply as CPython compiles are rewritten into programs that compile and compute the same: method
chains, long sums, nested brackets and calls, at depths up to compile()'s own limits (found here, from compile())."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from helpers import api_records, run_plain, run_tc

from traincheck_rewrite.rewrite import RewriteError, rewrite_source
from traincheck_rewrite.rewrite.bootstrap import BOOT_MODULE, marker

PRELUDE = """\
import math  # a first simple statement: the bootstrap shares its line
class V(int):
    def add(self, k):
        return V(int(self) + k)

    def __add__(self, k):
        return V(int(self) + k)


f = V  # bound by assignment: calls of f are wrapped (they could be an API's)
x = V(1)
"""
# Each layer wraps the expression E built so far.
LAYERS = {
    "paren": "({})",
    "list": "[{}][0]",
    "call": "f({})",
    "method": "{}.add(1)",
    "sum": "{} + x",
    "attribute_call": "V.add({}, 2)",
}
BRACKETED = {"paren", "list", "call", "attribute_call"}  # nest one bracket level deeper each


def program(layers: list[str]) -> str:
    expr = "x"
    for layer in layers:
        expr = LAYERS[layer].format(expr)
    return PRELUDE + f"y = {expr}\nfor i in range(x.add(1)):\n    y = y + i\n"


def run_rewritten(source: str) -> tuple[int, int]:
    """Run the rewritten program as a main script (so compiled as Python compiles one) with a hook that counts the
    wrapped calls, defined on the bootstrap's line; returns (y, calls through the hook)."""
    out = rewrite_source(source, "deep.py")
    boot = f"import {BOOT_MODULE} as _tc_boot; {marker('_tc_')}; "
    assert out.startswith(boot), out[:200]
    hook = "_calls = [0]; _tc_ = lambda site, fn: (_calls.append(site), fn)[1]; _tc_.loop = lambda site, it: it; "
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "deep.py"
        script.write_text(hook + out[len(boot):] + "print(y, len(_calls) - 1)\n")
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    y, calls = done.stdout.split()
    return int(y), int(calls)


def plain_result(source: str) -> int | None:
    """y as `python deep.py` computes it, or None when Python itself cannot compile the program (a main script is
    compiled with the whole recursion budget: `python -c` would have one frame less)."""
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "deep.py"
        script.write_text(source + "print(y)\n")
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    return int(done.stdout) if done.returncode == 0 else None


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(st.lists(st.tuples(st.sampled_from(sorted(LAYERS)), st.integers(1, 250)), min_size=1, max_size=5))
def test_generated_deep_expressions_rewrite_to_code_that_computes_the_same(runs: list[tuple[str, int]]):
    """Runs of layers (up to 1,250 deep, at most 2 levels each: within compile()'s ~3,000)."""
    layers = [layer for layer, count in runs for _ in range(count)]
    if sum(layer in BRACKETED for layer in layers) > 199:  # beyond what the tokenizer takes (with `range(x.add(1))`)
        layers = [layer for layer in layers if layer not in BRACKETED] or ["sum"]
    source = program(layers)
    expected = plain_result(source)
    assert expected is not None
    y, calls = run_rewritten(source)
    assert y == expected
    assert calls >= 1  # x.add(1) at least: a deep file still has its shallow calls wrapped


def _limit(make, top: int) -> int:
    """The largest n for which Python runs PRELUDE + make(n) as a main script (bisection)."""
    lo, hi = 1, top
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if plain_result(PRELUDE + make(mid) + "\n") is None:
            hi = mid
        else:
            lo = mid
    return lo


SHAPES = {
    "nested parentheses": lambda n: "y = " + "(" * n + "x" + ")" * n,
    "nested lists": lambda n: "y = " + "[" * n + "x" + "]" * n + "[0]" * n,
    "nested calls": lambda n: "y = " + "f(" * n + "x" + ")" * n,
    "sum": lambda n: "y = " + " + ".join(["x"] * n),
    "method chain": lambda n: "y = x" + ".add(1)" * n,
}


@pytest.mark.slow
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_each_shape_at_the_deepest_that_compile_accepts(shape: str):
    make = SHAPES[shape]
    n = _limit(make, 4000)
    source = PRELUDE + make(n) + "\n"
    expected = plain_result(source)
    assert expected is not None
    assert run_rewritten(source)[0] == expected
    # Clearly deeper than Python compiles: one line naming the file and line, no traceback. (At the very edge our
    # check and the interpreter's may differ by a level or two; a file passed on there fails as in the plain run.)
    with pytest.raises(RewriteError, match=r"^deep\.py:\d+: cannot compile: "):
        rewrite_source(PRELUDE + make(n + 20) + "\n", "deep.py")


TRAIN = """\
import torch

x = torch.zeros(2)
y = x{chain}
total = {terms}
print(y.tolist(), total.item())
"""


def test_a_program_with_an_80_call_chain_and_a_1000_term_sum_runs_traced_as_plainly(tmp_path: Path):
    (tmp_path / "train.py").write_text(TRAIN.format(chain=".add(1)" * 80, terms=" + ".join(["torch.ones(1)"] * 1000)))
    plain = run_plain([sys.executable, "train.py"], cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    traced = run_tc(["--pyscript", str(tmp_path / "train.py")], tmp_path / "out", cwd=tmp_path)
    assert traced.returncode == 0, traced.stderr[-3000:]
    assert traced.stdout == plain.stdout == "[80.0, 80.0] 1000.0\n"
    logged = [r["function"] for r in api_records(traced.run_dir) if r["type"] == "function_call (pre)"]
    assert logged.count("torch.Tensor.add") == 80 and logged.count("torch.ones") == 1000
