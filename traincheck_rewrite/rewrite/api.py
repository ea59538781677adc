"""rewrite_source(): the whole source-to-source transform of one file, checked before it is returned."""

from __future__ import annotations

import ast

import libcst as cst

from . import bootstrap
from .calls import CallWrapper
from .loops import LoopMarker, loop_spans
from .models import track_models
from .names import collect_names, hook_name
from .positions import call_spans, cst_call_spans
from .results import Bindings, RewriteError, SiteTable


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
    marks loop iterations for the step counter. (Library modules: library.py.)
    """
    text = source.decode("utf-8", "replace") if isinstance(source, bytes) else source
    if bootstrap.is_instrumented(text):
        return source
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

    name = hook_name(text)
    lazy = bootstrap.insert_bootstrap(module, name) is None  # no line can take the runtime import
    hook = cst.parse_expression(bootstrap.LAZY_HOOK_SOURCE) if lazy else cst.Name(name)
    facts = collect_names(tree, modules)
    sites = sites if sites is not None else SiteTable()
    rewritten, wrapper = _wrap_calls(module, facts, call_spans(tree, text), len(sites.sites), hook, lazy)
    if wrapper.mismatch or wrapper.visited != len(wrapper.spans):
        rewritten, wrapper = _wrap_calls(module, facts, cst_call_spans(module), len(sites.sites), hook, lazy)
    site_base = len(sites.sites) + len(wrapper.wrapped)
    marker = None
    if loops:
        marker = LoopMarker(hook, loop_spans(tree, text), site_base)
        rewritten = rewritten.visit(marker)
    if models or meta_from:
        targets = {name: ("track", name) for name in models}
        targets.update({var: ("meta", key) for key, var in (meta_from or {}).items()})
        rewritten = track_models(rewritten, targets, hook, filename, bindings if bindings is not None else Bindings())
    if not lazy:
        rewritten = bootstrap.insert_bootstrap(rewritten, name)

    result: str | bytes = rewritten.bytes if isinstance(source, bytes) else rewritten.code
    _check(result, source, filename)
    sites.extend(filename, wrapper.wrapped)
    if marker is not None:
        sites.extend(filename, marker.marked)
    return result


def _wrap_calls(module, facts, spans, site_base, hook, lazy) -> tuple[cst.Module, CallWrapper]:
    wrapper = CallWrapper(facts, spans, site_base, hook, hook_has_quotes=lazy)
    return module.visit(wrapper), wrapper


def _check(result: str | bytes, source: str | bytes, filename: str) -> None:
    nl = b"\n" if isinstance(result, bytes) else "\n"
    if result.count(nl) != source.count(nl):  # type: ignore[arg-type]
        raise RewriteError(f"{filename}: internal error: the rewrite moved lines; nothing was written")
    try:
        compile(result, filename, "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise RewriteError(f"{filename}:{exc.lineno}: internal error: rewritten code does not compile: {exc.msg}") from None
