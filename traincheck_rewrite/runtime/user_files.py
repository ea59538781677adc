"""The program's instrumented files run under the user's own file names, so warnings and tracebacks name them.

The rewrite keeps every statement on its line, so the instrumented code compiled with the ORIGINAL path as its file
name (`co_filename`) points warnings, tracebacks, `inspect` and debuggers at the user's file, line for line, as
pytest's assertion rewriting does for test modules. `__file__` stays the run folder's copy (paths relative to the
script keep resolving inside the copied tree). Only files whose original is unchanged since the rewrite get the
user's name (the run folder keeps a copy of each: `original_sources/`, or the file itself where it was copied as it
was); others keep the copy's.

- The main script: Python has compiled the run folder's file before any of our code runs. Its first line calls
  `boot.attach`, which runs the same source compiled under the user's path in the same `__main__` namespace
  (`run_main`) and then ends the program as the interpreter would have (uncaught exceptions go to `sys.excepthook`
  from the user's frames down). Skipped where the bootstrap sits inside a `try:` (it would catch what the program
  raises) and for files with the lazy hook (no first line to start from).
- Modules the program imports from the run folder (`copy_all_files`): a `sys.meta_path` finder loads them with
  `SourceFileLoader`, whose code gets the original path.
"""

from __future__ import annotations

import dis
import json
import os
import sys
from importlib.machinery import PathFinder, SourceFileLoader
from types import CodeType

ORIGINALS = "original_sources"


class UserFiles:
    """Maps an instrumented file of the run folder to the user's file it was made from."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = os.path.realpath(run_dir)
        self.source_root = _source_root(run_dir)

    def original(self, file: str) -> tuple[str, bytes] | None:
        """The user's path for the instrumented `file` and its text, when that file is unchanged since the rewrite."""
        if self.source_root is None or not file:
            return None
        rel = os.path.relpath(os.path.realpath(file), self.run_dir)
        if rel.startswith(os.pardir) or os.path.isabs(rel):
            return None
        user = os.path.join(self.source_root, rel)
        kept_path = os.path.join(self.run_dir, ORIGINALS, rel)
        if not os.path.isfile(kept_path):  # a file copied as it was (one the rewrite could not take)
            kept_path = os.path.join(self.run_dir, rel)
        try:
            with open(kept_path, "rb") as f:
                kept = f.read()
            with open(user, "rb") as f:
                unchanged = f.read() == kept
        except OSError:
            return None
        return (user, kept) if unchanged else None



def _source_root(run_dir: str) -> str | None:
    """The folder of the script as the user named it (absolute, links kept, as Python names `python train.py`)."""
    try:
        with open(os.path.join(run_dir, "run.json"), encoding="utf-8") as f:
            info = json.load(f)
        return os.path.dirname(os.path.abspath(os.path.join(info["cwd"], info["config"]["pyscript"])))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def for_user(code: CodeType, filename: str, instrumented: bytes, original: bytes) -> CodeType:
    """`code` (and every code object inside it) under `filename`, without column positions on the lines the rewrite
    changed: there they are the instrumented text's, and a traceback would underline the wrong part of the user's
    line (Python underlines nothing where it has no columns)."""
    changed = {n for n, (a, b) in enumerate(zip(instrumented.splitlines(), original.splitlines()), 1) if a != b}
    return _for_user(code, filename, changed)


def _for_user(code: CodeType, filename: str, changed: set[int]) -> CodeType:
    consts = tuple(_for_user(c, filename, changed) if isinstance(c, CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts, co_linetable=_linetable(code, changed))


def _linetable(code: CodeType, changed: set[int]) -> bytes:
    """`code`'s location table (CPython 3.11+ format: Objects/locations.md), columns left out on `changed` lines."""
    positions = []
    for line, end_line, col, end_col in code.co_positions():
        if line is None:
            positions.append(None)
        elif col is None or end_col is None or end_line is None or any(n in changed for n in range(line, end_line + 1)):
            positions.append((line, None, None, None))
        else:
            positions.append((line, end_line, col, end_col))
    out = bytearray()
    previous_line = code.co_firstlineno
    i = 0
    while i < len(positions):
        j = i + 1
        while j < len(positions) and j - i < 8 and positions[j] == positions[i]:
            j += 1
        head = 0x80 | (j - i - 1)
        position = positions[i]
        if position is None:
            out.append(head | 15 << 3)  # no location
        else:
            line, end_line, col, end_col = position
            if col is None:
                out.append(head | 13 << 3)  # line only
                _svarint(line - previous_line, out)
            else:
                out.append(head | 14 << 3)  # long form
                _svarint(line - previous_line, out)
                _varint(end_line - line, out)
                _varint(col + 1, out)
                _varint(end_col + 1, out)
            previous_line = line
        i = j
    return bytes(out)


def _varint(value: int, out: bytearray) -> None:
    while value >= 64:
        out.append(0x40 | (value & 63))
        value >>= 6
    out.append(value)


def _svarint(value: int, out: bytearray) -> None:
    _varint((-value << 1) | 1 if value < 0 else value << 1, out)


# --- the main script --------------------------------------------------------------------------------------------

_ran_main = False
_launcher: CodeType | None = None


def run_main(files: UserFiles, file: str, frame) -> None:
    """From the bootstrap at the top of the run folder's main script (`frame`): run the program under the user's file
    name and end the process, or return (the program then runs as compiled) where that cannot be done."""
    global _ran_main, _launcher
    if _ran_main or frame.f_globals.get("__name__") != "__main__" or frame.f_code.co_name != "<module>":
        return
    found = files.original(file)
    if found is None or frame.f_code.co_filename == found[0] or _inside_try(frame):
        return
    try:
        with open(file, "rb") as f:
            source = f.read()
        code = for_user(compile(source, found[0], "exec", dont_inherit=True), found[0], source, found[1])
    except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
        return
    _ran_main = True
    _launcher = frame.f_code
    try:
        exec(code, frame.f_globals)
    except SystemExit:
        raise
    except BaseException as exc:
        _uncaught(exc)
    raise SystemExit(0)  # the program's module code has run: what follows the bootstrap in `frame` must not


def is_launcher(code: CodeType) -> bool:
    """Whether `code` is the run folder's main script that handed over to `run_main` (a frame to hide)."""
    return code is _launcher


def _inside_try(frame) -> bool:
    """Whether the frame's current instruction is covered by a handler (`try:`, `with`)."""
    parse = getattr(dis, "_parse_exception_table", None)
    if parse is None:
        return True
    return any(entry.start <= frame.f_lasti < entry.end for entry in parse(frame.f_code))


def _uncaught(exc: BaseException) -> None:
    """What the interpreter does with an exception that leaves the main module, with the traceback starting at the
    program's own module frame, as in the plain run; a KeyboardInterrupt goes on up (the process then ends by
    SIGINT, as Python ends it), its extra frames hidden by boot's excepthook."""
    tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    exc.__traceback__ = tb
    if isinstance(exc, KeyboardInterrupt):
        raise exc
    sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
    try:
        sys.excepthook(type(exc), exc, tb)
    except BaseException as hook_error:  # as PyErr_Print does: say so, then show the original
        print("Error in sys.excepthook:", file=sys.stderr)
        sys.__excepthook__(type(hook_error), hook_error, hook_error.__traceback__)
        print("\nOriginal exception was:", file=sys.stderr)
        sys.__excepthook__(type(exc), exc, tb)
    raise SystemExit(1)


# --- modules imported from the run folder -----------------------------------------------------------------------


class _UserNamedLoader(SourceFileLoader):
    """A module of the run folder, its code under the user's file name (the `.pyc` cache keeps the copy's, as
    Python fixes the name up on loading; so the name is set after)."""

    def __init__(self, fullname: str, path: str, original: tuple[str, bytes]) -> None:
        super().__init__(fullname, path)
        self.original = original

    def get_code(self, fullname: str):
        code = super().get_code(fullname)
        if code is None:
            return None
        return for_user(code, self.original[0], self.get_data(self.path), self.original[1])


class UserFileFinder:
    """Claims modules found in the run folder whose original is unchanged; everything else is left to the others."""

    def __init__(self, files: UserFiles) -> None:
        self.files = files
        self.top_level = {name[:-3] if name.endswith(".py") else name for name in _listdir(files.run_dir)}
        self._inside: dict[str, bool] = {}
        self._real: dict[str, str] = {}

    def _in_run_folder(self, folder: str) -> bool:
        known = self._inside.get(folder)
        if known is None:
            run_dir = self.files.run_dir
            real = self._realpath(folder)
            known = self._inside[folder] = real == run_dir or real.startswith(run_dir + os.sep)
        return known

    def _realpath(self, folder: str) -> str:
        """`os.path.realpath(folder)` from its parent's, which the packages beside it share: one `lstat` per new
        folder instead of one per part of its path (every package a program imports asks this finder first)."""
        real = self._real.get(folder)
        if real is None:
            parent, name = os.path.split(folder)
            if not os.path.isabs(folder) or not name or name in (os.curdir, os.pardir) or parent == folder:
                real = os.path.realpath(folder)
            else:
                real = os.path.join(self._realpath(parent), name)
                if os.path.islink(real):
                    real = os.path.realpath(real)
            self._real[folder] = real
        return real

    def find_spec(self, fullname: str, path=None, target=None):
        if path is None:
            if fullname not in self.top_level:
                return None
        elif not any(isinstance(p, str) and self._in_run_folder(p) for p in path):
            return None
        spec = PathFinder.find_spec(fullname, path)
        if spec is None or type(spec.loader) is not SourceFileLoader or not spec.origin:
            return None
        original = self.files.original(spec.origin)
        if original is None:
            return None
        spec.loader = _UserNamedLoader(fullname, spec.origin, original)
        return spec


def _listdir(folder: str) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []
