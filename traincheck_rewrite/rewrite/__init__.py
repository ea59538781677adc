"""Pure source-to-source transforms (libcst). Never imports torch; imports libcst only when `rewrite_source` is
first used (a run whose files all come from the rewrite cache does without it)."""

from .results import Bindings, RewriteError, SiteTable

__all__ = ["Bindings", "RewriteError", "SiteTable", "rewrite_source"]


def __getattr__(name: str):
    if name == "rewrite_source":
        from .api import rewrite_source

        return rewrite_source
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
