"""Rewrite every .py file of the installed torch package: each output compiles (rewrite_source compiles it before
returning), keeps its line count, and rewriting it again changes nothing."""

from __future__ import annotations

import importlib.util
import os
import time
from multiprocessing import get_context
from pathlib import Path

from traincheck_rewrite.rewrite import RewriteError, rewrite_source


def _rewrite_file(path: str) -> tuple[str, str | None, int]:
    source = Path(path).read_bytes()
    try:
        compile(source, path, "exec", dont_inherit=True)
    except SyntaxError:
        return path, None, 0  # written for a newer Python: not a program this interpreter runs
    try:
        once = rewrite_source(source, path)
    except RewriteError as exc:
        return path, str(exc), 0
    if once.count(b"\n") != source.count(b"\n"):
        return path, "line count changed", 0
    if rewrite_source(once, path) != once:
        return path, "second rewrite changed the file", 0
    return path, None, once.count(b"_tc_(")


def test_every_torch_source_file_rewrites_compiles_and_is_idempotent(capsys):
    root = Path(importlib.util.find_spec("torch").origin).parent
    files = sorted(str(p) for p in root.rglob("*.py"))
    assert len(files) > 1000
    start = time.perf_counter()
    with get_context("fork").Pool(min(2, os.cpu_count() or 1)) as pool:
        results = pool.map(_rewrite_file, files, chunksize=8)
    elapsed = time.perf_counter() - start
    failures = [(p, e) for p, e, _ in results if e is not None]
    wrapped = sum(n for _, _, n in results)
    with capsys.disabled():
        print(f"\ncorpus: {len(files)} torch files, {wrapped} call sites wrapped, {len(files) / elapsed:.1f} files/s")
    assert failures == []
    assert wrapped > 10000
