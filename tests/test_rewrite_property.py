"""Generated programs (hypothesmith, from Python's grammar): every one that compiles is either rewritten into code
that compiles with the same number of lines, or refused with a RewriteError naming the file; never a crash and
never broken output. Derandomized and bounded so CI sees the same examples in a few seconds."""

from __future__ import annotations

import warnings

import hypothesmith
from hypothesis import HealthCheck, given, settings

from traincheck_rewrite.rewrite import RewriteError, rewrite_source


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(hypothesmith.from_grammar())
def test_generated_programs_rewrite_to_programs_that_compile(source: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SyntaxWarning)
        try:
            compile(source, "g.py", "exec")
        except (SyntaxError, ValueError):
            return  # the grammar generator also yields programs the compiler rejects
        try:
            out = rewrite_source(source, "g.py", models=("model", "x"), meta_from={"epoch": "y"})
        except RewriteError as exc:
            assert str(exc).startswith("g.py")
            return
        compile(out, "g.py", "exec")
    assert out.count("\n") == source.count("\n")
