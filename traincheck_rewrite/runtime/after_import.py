"""Run a callback right after a module has been imported, whoever imports it and whichever finder loads it.

A `sys.meta_path` finder first in line claims nothing itself: for a watched name it asks the finders behind it for
the spec and wraps the loader, so that the callback runs once the module's code has executed. Everything else the
loader offers (`get_source`, `get_code`, resources) is passed through.
"""

from __future__ import annotations

import sys
import threading

from .warn import warn_once

_watched: dict[str, list] = {}
_lock = threading.Lock()


class _Then:
    """The real loader, then the callbacks."""

    def __init__(self, loader, callbacks: list) -> None:
        self._loader = loader
        self._callbacks = callbacks

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        for callback in self._callbacks:
            try:
                callback(module)
            except Exception as exc:  # never the program's problem
                warn_once(f"after importing {module.__name__}: {type(exc).__name__}: {exc}")

    def __getattr__(self, name):
        return getattr(self._loader, name)


class _AfterImportFinder:
    def find_spec(self, fullname: str, path=None, target=None):
        with _lock:
            callbacks = _watched.pop(fullname, None)
        if callbacks is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _Then(spec.loader, callbacks)
                return spec
        return None


_finder = _AfterImportFinder()


def after_import(name: str, callback) -> None:
    """Call `callback(module)` once `name` has been imported (now, if it already is)."""
    module = sys.modules.get(name)
    if module is not None:
        callback(module)
        return
    with _lock:
        _watched.setdefault(name, []).append(callback)
    if _finder not in sys.meta_path:
        sys.meta_path.insert(0, _finder)
