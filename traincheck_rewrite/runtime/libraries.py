"""Library depth: an import hook that rewrites the configured library modules as they are imported.

As pytest rewrites test modules (`_pytest/assertion/rewrite.py`): a `sys.meta_path` finder claims the modules named
in `rewrite_libraries` and their submodules, and its loader runs the same call-logging rewrite as on user files
(no loop markers, no model tracking) with `_tc_` put into the module's globals. The file, `__file__`, line numbers
and `get_source` stay those of the installed library, so tracebacks, `inspect.getsource`, TorchScript (which
compiles the original source) and pickling (by qualified name) see the library as it is.

Calls made while these modules and their parent packages execute (import time) are not logged unless the runtime
setting `log_import_time_calls` asks for them: a package's set-up is not training.
"""

from __future__ import annotations

import sys
import threading
from importlib.machinery import PathFinder, SourceFileLoader

from . import codecache, recorder
from .warn import warn_once

HOOK = "_tc_"  # the name rewrite.calls.HOOK (not imported: the rewriter needs libcst)
# Never rewritten, even inside a named package (`torch`): what the hook itself calls (`torch.compiler.is_compiling`
# calls `torch.jit.is_scripting`); the compiler stack, which traces library code and must not trace itself; and
# torch._numpy, which wraps every name its modules hold, `_tc_` included.
NEVER_REWRITTEN = (
    "torch.compiler", "torch.jit", "torch._jit_internal", "torch._dynamo", "torch._inductor", "torch.fx", "torch._numpy"
)
_import_lock = threading.Lock()


def covered(name: str, libraries: tuple[str, ...]) -> bool:
    return any(name == lib or name.startswith(lib + ".") for lib in libraries)


def _begin_import() -> None:
    with _import_lock:
        recorder.importing += 1


def _end_import() -> None:
    with _import_lock:
        recorder.importing -= 1


class _ImportTimeLoader(SourceFileLoader):
    """Loads a module as usual; library calls made while it executes are import time (not logged)."""

    def exec_module(self, module) -> None:
        _begin_import()
        try:
            super().exec_module(module)
        finally:
            _end_import()


class _RewritingLoader(_ImportTimeLoader):
    """Loads the rewritten code of a library module (from the cache, or rewritten now and cached)."""

    def __init__(self, fullname: str, path: str, label: str, modules: tuple[str, ...], quiet_import: bool) -> None:
        super().__init__(fullname, path)
        self.label = label  # the site prefix: "torch/optim/sgd.py"
        self.modules = modules
        self.quiet_import = quiet_import

    def get_code(self, fullname: str):
        source = self.get_data(self.path)
        key = codecache.entry_key(source, self.path, (self.label, *self.modules))
        code = codecache.load(key)
        if code is not None:
            return code
        from ..rewrite import RewriteError, rewrite_source  # libcst: only when the cache has no entry

        try:
            rewritten = rewrite_source(source, self.path, modules=self.modules, loops=False, library=self.label)
        except RewriteError as exc:
            warn_once(f"rewrite_libraries: {fullname} is not rewritten ({exc})")
            return super().get_code(fullname)
        code = compile(rewritten, self.path, "exec", dont_inherit=True)
        try:
            codecache.store(key, code)
        except OSError as exc:
            warn_once(f"cannot write the rewrite cache in {codecache.cache_dir()} ({exc}); rewriting at every run", "cache")
        return code

    def exec_module(self, module) -> None:
        module.__dict__[HOOK] = recorder.library_hook
        if self.quiet_import:
            super().exec_module(module)
        else:
            SourceFileLoader.exec_module(self, module)


class LibraryFinder:
    """Claims the library modules to rewrite and, for quiet import time, their parent packages."""

    def __init__(self, libraries: tuple[str, ...], modules: tuple[str, ...], log_import_time_calls: bool) -> None:
        self.libraries = libraries
        self.modules = modules
        self.quiet_import = not log_import_time_calls
        self.parents = {lib.rsplit(".", n)[0] for lib in libraries for n in range(1, lib.count(".") + 1)}

    def find_spec(self, fullname: str, path=None, target=None):
        rewrite = covered(fullname, self.libraries) and not covered(fullname, NEVER_REWRITTEN)
        if not rewrite and not (self.quiet_import and fullname in self.parents):
            return None
        spec = PathFinder.find_spec(fullname, path)
        if spec is None or type(spec.loader) is not SourceFileLoader:
            return None  # not plain source (an extension, a zip): imported as usual
        if rewrite:
            package = spec.submodule_search_locations is not None
            label = fullname.replace(".", "/") + ("/__init__.py" if package else ".py")
            spec.loader = _RewritingLoader(fullname, spec.origin, label, self.modules, self.quiet_import)
        else:
            spec.loader = _ImportTimeLoader(fullname, spec.origin)
        return spec


def install(libraries: tuple[str, ...], modules: tuple[str, ...], log_import_time_calls: bool = False) -> None:
    """Put the finder first on `sys.meta_path` (once); warn about covered modules that are already imported."""
    if any(isinstance(f, LibraryFinder) for f in sys.meta_path):
        return
    early = [name for name in list(sys.modules) if covered(name, libraries)]
    if early:
        named = ", ".join(lib for lib in libraries if any(covered(name, (lib,)) for name in early))
        warn_once(
            f"rewrite_libraries: {named} ({len(early)} modules) were imported before tracing started and are not "
            "rewritten (the instrumented script must import them itself)"
        )
    sys.meta_path.insert(0, LibraryFinder(libraries, modules, log_import_time_calls))
