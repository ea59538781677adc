"""On-disk cache of rewrites, shared by every process that runs traced: library modules as marshalled code objects
(`.code`), the program's own files as their rewritten source with the call sites and bindings found (`.rewrite`).

Rewriting torch's modules with libcst takes seconds, and importing libcst alone a fifth of a second before a
program can start; loading an entry takes milliseconds. An entry's name is a hash of everything it depends on: the
source bytes, the source path, the rewrite options, the tool (its version, the rewriter's own source, libcst's
version) and Python (bytecode magic, optimization level). So an entry is never stale, only unused;
`tc-rewrite cache clear` removes them all.

Entries are written to a temporary file and renamed into place, so concurrent processes (DDP ranks, DataLoader
workers, parallel runs) may all build the same entry: each reader sees a whole file or none. A file that fails its
checksum or does not unmarshal into code is ignored and rebuilt.
"""

from __future__ import annotations

import hashlib
import importlib.util
import marshal
import os
import sys
import tempfile
from pathlib import Path
from types import CodeType

from .. import __version__

MAGIC = b"TCRWCODE"
SUFFIX = ".code"
REWRITE_SUFFIX = ".rewrite"
_SUFFIXES = (SUFFIX, REWRITE_SUFFIX)
_DIGEST = 16
_fingerprint: bytes | None = None


def cache_dir() -> Path:
    """`$TC_REWRITE_CACHE_DIR`, else `$XDG_CACHE_HOME/traincheck_rewrite`, else `~/.cache/traincheck_rewrite`."""
    explicit = os.environ.get("TC_REWRITE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "traincheck_rewrite"


def _tool_fingerprint() -> bytes:
    """The tool version plus the rewriter's own source: a changed rewriter never reuses an older entry."""
    global _fingerprint
    if _fingerprint is None:
        h = hashlib.blake2b(__version__.encode(), digest_size=_DIGEST)
        h.update(b"libcst " + installed_version("libcst").encode())
        rewrite_dir = Path(__file__).resolve().parent.parent / "rewrite"
        for path in sorted(rewrite_dir.glob("*.py")):
            h.update(path.name.encode() + b"\0" + path.read_bytes())
        h.update(importlib.util.MAGIC_NUMBER + bytes([sys.flags.optimize]))
        _fingerprint = h.digest()
    return _fingerprint


def installed_version(distribution: str) -> str:
    """The version in the name of the distribution's metadata folder (`libcst-1.5.0.dist-info`) first found on
    sys.path, as `importlib.metadata.version` finds it, without importing that (a third of the runtime's own import
    time, in every traced process); "" when there is none."""
    prefix = distribution + "-"
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.startswith(prefix) and name.endswith((".dist-info", ".egg-info")):
                return name[len(prefix) : name.rindex(".")].split("-")[0]
    return ""


def entry_key(source: bytes, path: str, options: tuple[str, ...]) -> str:
    h = hashlib.blake2b(_tool_fingerprint(), digest_size=20)
    for part in (path, *options):
        h.update(part.encode() + b"\0")
    h.update(source)
    return h.hexdigest()


def load(key: str, folder: Path | None = None) -> CodeType | None:
    """The cached code, or None when there is no entry or it is damaged."""
    code = _read((folder or cache_dir()) / (key + SUFFIX))
    return code if isinstance(code, CodeType) else None


def load_rewrite(key: str, folder: Path | None = None) -> tuple | None:
    """A cached rewrite of a program file (see `store_rewrite`), or None."""
    value = _read((folder or cache_dir()) / (key + REWRITE_SUFFIX))
    return value if isinstance(value, tuple) and len(value) == 4 else None


def _read(path: Path):
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return _decode(data)


def _decode(data: bytes):
    head = len(MAGIC) + _DIGEST
    payload = data[head:]
    if data[: len(MAGIC)] != MAGIC or data[len(MAGIC) : head] != hashlib.blake2b(payload, digest_size=_DIGEST).digest():
        return None
    try:
        return marshal.loads(payload)
    except (EOFError, ValueError, TypeError):
        return None


def store(key: str, code: CodeType, folder: Path | None = None) -> None:
    """Write the entry atomically (temporary file + rename); raises OSError when the folder is not writable."""
    _write(key + SUFFIX, code, folder)


def store_rewrite(key: str, rewritten: bytes, sites: list[dict], found: dict, candidates: list, folder: Path | None = None) -> None:
    """A program file's rewrite: the source, the call-site entries it added, the bindings it found."""
    _write(key + REWRITE_SUFFIX, (rewritten, sites, found, candidates), folder)


def _write(name: str, value, folder: Path | None) -> None:
    folder = folder or cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    payload = marshal.dumps(value)
    data = MAGIC + hashlib.blake2b(payload, digest_size=_DIGEST).digest() + payload
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, folder / name)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def info(folder: Path | None = None) -> dict:
    """Location, number of entries, bytes, and how many entries fail to load."""
    folder = folder or cache_dir()
    entries = sorted(p for suffix in _SUFFIXES for p in folder.glob("*" + suffix)) if folder.is_dir() else []
    size = damaged = 0
    for path in entries:
        try:
            data = path.read_bytes()
        except OSError:
            damaged += 1
            continue
        size += len(data)
        damaged += _decode(data) is None
    return {"location": str(folder), "entries": len(entries), "bytes": size, "damaged": damaged}


def clear(folder: Path | None = None) -> int:
    """Remove every entry and leftover temporary file; returns how many files were removed."""
    folder = folder or cache_dir()
    removed = 0
    if not folder.is_dir():
        return removed
    for path in [*(p for suffix in _SUFFIXES for p in folder.glob("*" + suffix)), *folder.glob(".*.tmp")]:
        try:
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass
    return removed
