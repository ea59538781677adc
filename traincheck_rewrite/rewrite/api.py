"""rewrite_source(): the whole source-to-source transform of one file, checked before it is returned."""

from __future__ import annotations

import ast

import libcst as cst

from . import bootstrap
from .calls import CallWrapper
from .loops import LoopMarker, loop_spans
from .models import track_models
from .names import collect_names, hook_name
from .nesting import NESTING_ERRORS, SAFE_DEPTH, Nesting, compile_within, deepest_line, run_deep
from .positions import call_spans, cst_call_spans
from .results import Bindings, RewriteError, SiteTable
from .traincheck_imports import imports_traincheck, redirect_traincheck_imports


def rewrite_source(
    source: str | bytes,
    filename: str,
    *,
    modules: tuple[str, ...] = ("torch",),
    sites: SiteTable | None = None,
    models: tuple[str, ...] = (),
    meta_from: dict[str, str] | None = None,
    bindings: Bindings | None = None,
    loops: bool = True,
) -> str | bytes:
    """Instrument `source` (text, or bytes honouring a coding cookie); returns the same type.

    Every original line keeps its number and its text outside the inserted code. An already instrumented source is
    returned unchanged. `models` are the variable names whose bindings register a tracked model, `meta_from` maps
    meta-variable keys to the variables whose bindings set them; what was found is added to `bindings`. `loops`
    marks loop iterations for the step counter. Imports of TrainCheck's annotation API are pointed at the runtime's
    (traincheck_imports.py). (Library modules: library.py.)
    """
    return run_deep(_rewrite, source, filename, modules, sites, models, meta_from, bindings, loops)


def _rewrite(source, filename, modules, sites, models, meta_from, bindings, loops):
    text = source.decode("utf-8", "replace") if isinstance(source, bytes) else source
    if bootstrap.is_instrumented(text):
        return source
    _refuse_what_python_cannot_compile(source, filename)
    try:
        module = cst.parse_module(source)
    except cst.ParserSyntaxError as exc:
        raise RewriteError(f"{filename}:{exc.raw_line}:{exc.raw_column + 1}: cannot parse: {exc.message}") from None
    except Exception as exc:  # libcst raises a few other types for odd input (bad encodings)
        raise RewriteError(f"{filename}: cannot parse: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None

    text = source.decode(module.encoding, "replace") if isinstance(source, bytes) else source
    try:
        tree = ast.parse(text, filename)
    except SyntaxError as exc:  # valid for libcst's grammar, not for this Python
        raise RewriteError(f"{filename}:{exc.lineno}: cannot compile: {exc.msg}") from None

    sites = sites if sites is not None else SiteTable()
    found = Bindings()
    args = (module, tree, text, filename, isinstance(source, bytes), modules, len(sites.sites), models, meta_from, loops)
    result, wrapped, marked = _instrument(*args, found, None)
    try:
        compile_within(result, filename, SAFE_DEPTH, quiet=True)
    except NESTING_ERRORS:  # nested deeper than SAFE_DEPTH: only where the file itself does, and never past Python's limits
        found = Bindings()
        result, wrapped, marked = _instrument(*args, found, Nesting(tree, text))
    _check(result, source, filename)
    sites.extend(filename, wrapped)
    sites.extend(filename, marked)
    if bindings is not None:
        bindings.merge(found)
    return result


def _instrument(module, tree, text, filename, as_bytes, modules, site_base, models, meta_from, loops, bindings, nesting):
    """The rewritten source, the call sites wrapped and the loops marked (numbered from `site_base` + 1)."""
    name = hook_name(text)
    lazy = bootstrap.insert_bootstrap(module, name) is None  # no line can take the runtime import
    hook = cst.parse_expression(bootstrap.LAZY_HOOK_SOURCE) if lazy else cst.Name(name)
    facts = collect_names(tree, modules)
    rewritten, wrapper = _wrap_calls(module, facts, call_spans(tree, text), site_base, hook, lazy, nesting)
    if wrapper.mismatch or wrapper.visited != len(wrapper.spans):  # libcst's order: the pairing by index is off
        rewritten, wrapper = _wrap_calls(module, facts, cst_call_spans(module), site_base, hook, lazy, nesting, paired=False)
    marker = None
    if loops:
        marker = LoopMarker(hook, loop_spans(tree, text), site_base + len(wrapper.wrapped), nesting)
        rewritten = rewritten.visit(marker)
    if models or meta_from:
        targets = {name: ("track", name) for name in models}
        targets.update({var: ("meta", key) for key, var in (meta_from or {}).items()})
        rewritten = track_models(rewritten, targets, hook, filename, bindings)
    if imports_traincheck(text):
        rewritten = redirect_traincheck_imports(rewritten)
    if not lazy:
        rewritten = bootstrap.insert_bootstrap(rewritten, name)
    return rewritten.bytes if as_bytes else rewritten.code, wrapper.wrapped, marker.marked if marker is not None else []


def _wrap_calls(module, facts, spans, site_base, hook, lazy, nesting, paired=True) -> tuple[cst.Module, CallWrapper]:
    wrapper = CallWrapper(facts, spans, site_base, hook, hook_has_quotes=lazy, nesting=nesting, paired=paired)
    return module.visit(wrapper), wrapper


def _refuse_what_python_cannot_compile(source: str | bytes, filename: str) -> None:
    """A file nested beyond what Python compiles is refused in one line (before libcst, which would take minutes on
    it); other syntax errors are reported by the parsers below, with their own messages."""
    try:
        compile_within(source, filename, quiet=True)
    except SyntaxError as exc:
        if "nested" in exc.msg or "too complex" in exc.msg:
            raise RewriteError(f"{filename}:{exc.lineno}: cannot compile: {exc.msg}") from None
    except (RecursionError, MemoryError) as exc:
        try:
            line = deepest_line(ast.parse(source, filename))
        except NESTING_ERRORS:
            line = 1
        raise RewriteError(f"{filename}:{line}: cannot compile: {_too_deep(exc)}") from None


def _too_deep(exc: BaseException) -> str:
    return str(exc) or "nested too deeply for Python's parser"


def _check(result: str | bytes, source: str | bytes, filename: str) -> None:
    nl = b"\n" if isinstance(result, bytes) else "\n"
    if result.count(nl) != source.count(nl):  # type: ignore[arg-type]
        raise RewriteError(f"{filename}: internal error: the rewrite moved lines; nothing was written")
    try:
        compile_within(result, filename)  # as Python compiles the program's main script
    except SyntaxError as exc:
        raise RewriteError(f"{filename}:{exc.lineno}: internal error: rewritten code does not compile: {exc.msg}") from None
    except (RecursionError, MemoryError) as exc:
        raise RewriteError(f"{filename}: internal error: rewritten code does not compile: {_too_deep(exc)}") from None
