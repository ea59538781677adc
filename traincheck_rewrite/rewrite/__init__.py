"""Pure source-to-source transforms. Never imports torch; imports libcst only when `rewrite_source` is first used (a
run whose files all come from the rewrite cache does without it); library modules (`rewrite_library`) need only `ast`."""

from .results import Bindings, RewriteError, SiteTable

__all__ = ["Bindings", "RewriteError", "SiteTable", "rewrite_library", "rewrite_source"]


def __getattr__(name: str):
    if name == "rewrite_source":
        from .api import rewrite_source

        return rewrite_source
    if name == "rewrite_library":
        from .library import rewrite_library

        return rewrite_library
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
