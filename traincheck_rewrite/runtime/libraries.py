"""Library depth: an import hook that rewrites the configured library modules as they are imported.

As pytest rewrites test modules (`_pytest/assertion/rewrite.py`): a `sys.meta_path` finder claims the modules named
in `rewrite_libraries` and their submodules, and its loader runs the same call-logging rewrite as on user files
(no loop markers, no model tracking) with the hook put into the module's globals (as `_tc_`, or the name
`hook_name` chose where the module uses that one). The file, `__file__`, line numbers
and `get_source` stay those of the installed library, so tracebacks, `inspect.getsource`, TorchScript (which
compiles the original source) and pickling (by qualified name) see the library as it is.

Calls made while these modules and their parent packages execute (import time) are not logged unless the runtime
setting `log_import_time_calls` asks for them: a package's set-up is not training.

Training frameworks (`FRAMEWORKS`) are covered by default (`rewrite_frameworks`): when the program imports one, the
few modules through which it drives training are rewritten, so the calls it makes on the program's behalf
(backward, optimizer steps, zero_grad, the model's forward, gradient clipping, LR scheduler steps) are logged, and
the modules that hold its training and evaluation loops get loop markers, so the step counter finds the loop there.
The first run rewrites them (seconds; one line on stderr says so) and later runs load them from the cache.
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
import time
from fnmatch import fnmatchcase
from importlib._bootstrap import _call_with_frames_removed
from importlib.machinery import PathFinder, SourceFileLoader

from ..rewrite.names import hook_name
from . import codecache, recorder
from .warn import warn_once

# Never rewritten, even inside a named package (`torch`): what the hook itself calls (`torch.compiler.is_compiling`
# calls `torch.jit.is_scripting`); the compiler stack, which traces library code and must not trace itself; and
# torch._numpy, which wraps every name its modules hold, `_tc_` included.
NEVER_REWRITTEN = (
    "torch.compiler", "torch.jit", "torch._jit_internal", "torch._dynamo", "torch._inductor", "torch.fx", "torch._numpy"
)
# (module name or fnmatch pattern, covering submodules; its loops are marked for the step counter). Only what drives
# training: rewriting a whole framework costs tens of seconds on a first run and logs its data plumbing.
FRAMEWORKS = (
    ("torch.amp.grad_scaler", False),  # GradScaler.step -> optimizer.step, unscale_
    ("transformers.trainer", True),  # Trainer's training and evaluation loops: forward, backward, step, clip, eval
    ("transformers.trainer_pt_utils", False),
    ("transformers.models.*.modeling_*", False),  # the model's submodules' forwards
    ("accelerate.accelerator", False),  # accelerator.backward, clip_grad_norm_, prepare
    ("accelerate.optimizer", False),  # AcceleratedOptimizer.step/zero_grad -> the wrapped optimizer
    ("accelerate.scheduler", False),
    *(
        (f"{lightning}.{module}", loops)
        for lightning in ("lightning.pytorch", "pytorch_lightning")
        for module, loops in (
            ("loops", True),  # fit, epoch and evaluation loops; automatic optimization's closure
            ("core.module", False),  # LightningModule.backward, optimizer_step, optimizer_zero_grad, lr_scheduler_step
            ("core.optimizer", False),
            ("plugins.precision", False),  # precision.optimizer_step -> optimizer.step, clip_gradients
            ("strategies.strategy", False),
        )
    ),
    *(
        (f"{fabric}.{module}", False)  # the loop is the program's: Fabric.backward, the wrapped optimizer's step
        for fabric in ("lightning.fabric", "lightning_fabric")
        for module in (
            "plugins.precision",  # precision.backward -> tensor.backward, precision.optimizer_step -> optimizer.step
            "strategies.strategy",  # clip_gradients_norm -> clip_grad_norm_
        )
    ),
)
# Modules whose loops log their calls in the first iteration only (unless `track_inner_updates`): an optimizer's
# per-parameter loops make the same calls for every parameter, which teach the engine nothing more than the first
# parameter's and cost a logged call each; the parameters they change are recorded by the optimizer's public calls.
FIRST_ITERATIONS = ("torch.optim",)
_import_lock = threading.Lock()


def covered(name: str, libraries: tuple[str, ...]) -> bool:
    """`name` is one of `libraries`, a submodule of one, or matches one that is a pattern."""
    for lib in libraries:
        if name == lib or name.startswith(lib + "."):
            return True
        if "*" in lib and fnmatchcase(name, lib):
            return True
    return False


def framework_loops(name: str) -> bool | None:
    """None when `name` is no framework module; else whether its loops are marked."""
    for pattern, loops in FRAMEWORKS:
        if covered(name, (pattern,)):
            return loops
    return None


class _Progress:
    """One line on stderr when a first run starts rewriting library modules, one when the process ends; only for
    someone watching (a terminal, or `TC_REWRITE_PROGRESS=1`, which tc-rewrite sets when its stderr is a terminal),
    so that the program's own output, as logged, stays what it prints."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0

    def rewriting(self, fullname: str) -> None:
        if self.count == 0 and (os.environ.get("TC_REWRITE_PROGRESS") == "1" or _isatty(sys.stderr)):
            _say(f"rewriting library modules for tracing ({fullname}, ...); cached for next runs")
            atexit.register(self.done)
        self.count += 1

    def done(self) -> None:
        _say(f"rewrote {self.count} library modules in {self.seconds:.1f} s (cached in {codecache.cache_dir()})")


def _say(line: str) -> None:
    try:  # the program may have closed or replaced stderr
        sys.stderr.write(f"traincheck_rewrite: {line}\n")
        sys.stderr.flush()
    except Exception:
        pass


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


_progress = _Progress()


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

    def __init__(
        self, fullname: str, path: str, label: str, modules: tuple[str, ...], quiet_import: bool, loops: bool,
        first_iterations: bool = False,
    ) -> None:  # fmt: skip
        super().__init__(fullname, path)
        self.label = label  # the site prefix: "torch/optim/sgd.py"
        self.modules = modules
        self.quiet_import = quiet_import
        self.loops = loops
        self.first_iterations = first_iterations
        self.hook = hook_name(b"")  # what the rewritten code calls the hook: set by get_code from the source

    def get_code(self, fullname: str):
        source = self.get_data(self.path)
        self.hook = hook_name(source)
        options = ("loops" if self.loops else "", "first iterations" if self.first_iterations else "")
        key = codecache.entry_key(source, self.path, (self.label, *self.modules, *options))
        code = codecache.load(key)
        if code is not None:
            return code
        _progress.rewriting(fullname)
        started = time.monotonic()
        from ..rewrite import rewrite_library

        try:
            rewritten = rewrite_library(source, self.path, self.label, self.modules, self.loops, self.first_iterations)
            code = compile(rewritten, self.path, "exec", dont_inherit=True)
        except Exception as exc:  # RewriteError, or a bug of ours: the program runs the module as installed
            warn_once(f"rewrite_libraries: {fullname} is not rewritten ({type(exc).__name__}: {exc})")
            return super().get_code(fullname)
        finally:
            _progress.seconds += time.monotonic() - started
        try:
            codecache.store(key, code)
        except OSError as exc:
            warn_once(f"cannot write the rewrite cache in {codecache.cache_dir()} ({exc}); rewriting at every run", "cache")
        return code

    def exec_module(self, module) -> None:
        code = self.get_code(module.__name__)
        module.__dict__[self.hook] = recorder.library_hook
        if self.quiet_import:
            _begin_import()
        try:
            _call_with_frames_removed(exec, code, module.__dict__)  # as SourceFileLoader.exec_module does
        finally:
            if self.quiet_import:
                _end_import()


def _parents(name: str) -> set[str]:
    """The packages above a module name or pattern (`transformers.models` for `transformers.models.*.modeling_*`)."""
    parts = name.split(".")
    fixed = next((i for i, part in enumerate(parts) if "*" in part), len(parts))
    return {".".join(parts[:n]) for n in range(1, min(fixed + 1, len(parts)))}


class LibraryFinder:
    """Claims the library modules to rewrite and, for quiet import time, their parent packages."""

    def __init__(
        self, libraries: tuple[str, ...], modules: tuple[str, ...], log_import_time_calls: bool, frameworks: bool,
        track_inner_updates: bool = False,
    ) -> None:  # fmt: skip
        self.libraries = libraries
        self.first_iterations = () if track_inner_updates else FIRST_ITERATIONS
        self.frameworks = frameworks
        self.modules = modules
        self.quiet_import = not log_import_time_calls
        names = (*libraries, *(pattern for pattern, _ in FRAMEWORKS)) if frameworks else libraries
        self.parents = set().union(*(_parents(name) for name in names))
        # What any name could cover, in a few set look-ups: every import of the program asks this finder first.
        self.plain_names = {name for name in names if "*" not in name}
        self.pattern_heads = {name.partition(".")[0] for name in names if "*" in name}
        self.any_module = any("*" in head for head in self.pattern_heads)  # a pattern such as "*.modeling_*"

    def _may_claim(self, fullname: str) -> bool:
        """False for a module no name covers and no parent of one (most imports), without matching each name."""
        if fullname in self.parents:
            return True
        if self.any_module or fullname.partition(".")[0] in self.pattern_heads:
            return True
        name = fullname
        while name:
            if name in self.plain_names:
                return True
            name = name.rpartition(".")[0]
        return False

    def find_spec(self, fullname: str, path=None, target=None):
        if not self._may_claim(fullname):
            return None
        loops = framework_loops(fullname) if self.frameworks else None
        rewrite = (loops is not None or covered(fullname, self.libraries)) and not covered(fullname, NEVER_REWRITTEN)
        if not rewrite and not (self.quiet_import and fullname in self.parents):
            return None
        spec = PathFinder.find_spec(fullname, path)
        if spec is None or type(spec.loader) is not SourceFileLoader:
            return None  # not plain source (an extension, a zip): imported as usual
        if rewrite:
            package = spec.submodule_search_locations is not None
            label = fullname.replace(".", "/") + ("/__init__.py" if package else ".py")
            first = not loops and covered(fullname, self.first_iterations)
            spec.loader = _RewritingLoader(fullname, spec.origin, label, self.modules, self.quiet_import, bool(loops), first)
        else:
            spec.loader = _ImportTimeLoader(fullname, spec.origin)
        return spec


def install(
    libraries: tuple[str, ...], modules: tuple[str, ...], log_import_time_calls: bool = False, frameworks: bool = True,
    track_inner_updates: bool = False,
) -> None:  # fmt: skip
    """Put the finder first on `sys.meta_path` (once); warn about named modules that are already imported."""
    if any(isinstance(f, LibraryFinder) for f in sys.meta_path):
        return
    early = [name for name in list(sys.modules) if covered(name, libraries)]
    if early:
        named = ", ".join(lib for lib in libraries if any(covered(name, (lib,)) for name in early))
        warn_once(
            f"rewrite_libraries: {named} ({len(early)} modules) were imported before tracing started and are not "
            "rewritten (the instrumented script must import them itself)"
        )
    sys.meta_path.insert(0, LibraryFinder(libraries, modules, log_import_time_calls, frameworks, track_inner_updates))
