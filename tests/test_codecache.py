"""The cache of rewritten library code: round trip, damaged entries ignored, keys, location, and `tc-rewrite cache`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from traincheck_rewrite.runtime import codecache

SOURCE = b"def double(x):\n    return 2 * x\n"


def _store(folder: Path, source: bytes = SOURCE, path: str = "/lib/m.py") -> str:
    key = codecache.entry_key(source, path, ("lib/m.py", "torch"))
    codecache.store(key, compile(source, path, "exec", dont_inherit=True), folder)
    return key


def test_an_entry_loads_back_as_the_code_it_stored(tmp_path):
    key = _store(tmp_path)
    namespace: dict = {}
    exec(codecache.load(key, tmp_path), namespace)
    assert namespace["double"](21) == 42 and namespace["double"].__code__.co_filename == "/lib/m.py"
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_damaged_entry_is_ignored(tmp_path):
    key = _store(tmp_path)
    entry = tmp_path / (key + codecache.SUFFIX)
    good = entry.read_bytes()
    for damaged in (good[:-3], good[:20], good[:-1] + bytes([good[-1] ^ 1]), b"X" + good[1:], b""):
        entry.write_bytes(damaged)
        assert codecache.load(key, tmp_path) is None
    assert codecache.load("0" * 40, tmp_path) is None  # no entry at all


def test_the_key_changes_with_the_source_the_path_and_the_options():
    base = codecache.entry_key(SOURCE, "/lib/m.py", ("lib/m.py", "torch"))
    assert base == codecache.entry_key(SOURCE, "/lib/m.py", ("lib/m.py", "torch"))
    others = {
        codecache.entry_key(SOURCE + b"\n", "/lib/m.py", ("lib/m.py", "torch")),
        codecache.entry_key(SOURCE, "/other/m.py", ("lib/m.py", "torch")),
        codecache.entry_key(SOURCE, "/lib/m.py", ("lib/m.py", "torch", "numpy")),
    }
    assert base not in others and len(others) == 3


def test_location_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("TC_REWRITE_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert codecache.cache_dir() == tmp_path / "xdg" / "traincheck_rewrite"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert codecache.cache_dir() == tmp_path / "home" / ".cache" / "traincheck_rewrite"
    monkeypatch.setenv("TC_REWRITE_CACHE_DIR", str(tmp_path / "explicit"))
    assert codecache.cache_dir() == tmp_path / "explicit"


def test_cache_info_and_clear_commands(tmp_path):
    _store(tmp_path)
    damaged = _store(tmp_path, b"x = 1\n")
    (tmp_path / (damaged + codecache.SUFFIX)).write_bytes(b"TCRWCODE broken")
    (tmp_path / ".leftover.tmp").write_bytes(b"")  # a writer killed before its rename
    env = {**os.environ, "TC_REWRITE_CACHE_DIR": str(tmp_path)}

    def tc(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "traincheck_rewrite", "cache", *args], env=env,
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    info = json.loads(tc("info", "--json").stdout)
    assert info["location"] == str(tmp_path) and info["entries"] == 2 and info["damaged"] == 1 and info["bytes"] > 0
    assert "entries   2" in tc("info").stdout
    cleared = tc("clear")
    assert cleared.returncode == 0 and cleared.stdout.startswith("removed 3 files")
    assert json.loads(tc("info", "--json").stdout)["entries"] == 0 and not list(tmp_path.iterdir())


PROGRAM = '''"""A program whose rewrite the cache keeps."""
import torch

net = torch.nn.Linear(2, 2)
print(float(net(torch.ones(2)).sum() * 0))
'''


def _instrument(script: Path, out: Path, cache: Path, *flags: str) -> tuple[subprocess.CompletedProcess, Path]:
    """`tc-rewrite --only-instr` with import timing on; returns the process and the run folder."""
    out = next(out / f"run_{n}" for n in range(100) if not (out / f"run_{n}").exists())  # a new run folder each call
    env = {**os.environ, "TC_REWRITE_CACHE_DIR": str(cache)}
    cmd = [sys.executable, "-X", "importtime", "-m", "traincheck_rewrite", "--pyscript", str(script), "--only-instr",
           "--output-dir", str(out), *flags]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc, out


def _imports_libcst(proc: subprocess.CompletedProcess) -> bool:
    return any(re.fullmatch(r"import time:.*\|\s+libcst", line.rstrip()) for line in proc.stderr.splitlines())


def test_a_program_rewritten_before_comes_from_the_cache_without_libcst(tmp_path):
    script = tmp_path / "src" / "train.py"
    script.parent.mkdir()
    script.write_text(PROGRAM)
    cache, out = tmp_path / "cache", tmp_path / "out"
    made = ("train.py", "sites.json", "instrumentation.diff")
    cold, cold_dir = _instrument(script, out, cache, "--models-to-track", "model")
    warm, warm_dir = _instrument(script, out, cache, "--models-to-track", "model")
    assert _imports_libcst(cold) and not _imports_libcst(warm)
    assert [(warm_dir / f).read_bytes() for f in made] == [(cold_dir / f).read_bytes() for f in made]
    # what the rewrite found is kept too: the warning about a tracked name bound nowhere, with its candidates
    warning = [line for line in cold.stderr.splitlines() if "never bound" in line]
    assert warning and "net (train.py:4)" in warning[0]
    assert warning == [line for line in warm.stderr.splitlines() if "never bound" in line]

    # other options are another entry; a damaged entry is rewritten again
    other, other_dir = _instrument(script, out, cache, "--models-to-track", "net")
    assert _imports_libcst(other) and "_tc_.track(\"net\", net)" in (other_dir / "train.py").read_text()
    for entry in cache.glob("*" + codecache.REWRITE_SUFFIX):
        entry.write_bytes(entry.read_bytes()[:-2])
    again, again_dir = _instrument(script, out, cache, "--models-to-track", "model")
    assert _imports_libcst(again) and (again_dir / "train.py").read_bytes() == (cold_dir / "train.py").read_bytes()
    script.write_text(PROGRAM.replace("print(", "print(1, "))
    changed, changed_dir = _instrument(script, out, cache, "--models-to-track", "model")
    assert _imports_libcst(changed) and "print(1, " in (changed_dir / "train.py").read_text()
    entries = len(list(cache.glob("*" + codecache.REWRITE_SUFFIX)))
    assert entries == 3 and codecache.info(cache)["entries"] == entries and codecache.clear(cache) == entries


def test_the_libcst_version_in_the_key_is_the_one_importlib_metadata_gives():
    """Read from the metadata folder's name (no importlib.metadata in the traced process): the same version, and
    nothing for a distribution that is not installed."""
    import importlib.metadata

    for name in ("libcst", "torch", "zstandard"):
        assert codecache.installed_version(name) == importlib.metadata.version(name)
    assert codecache.installed_version("no-such-distribution-here") == ""
