"""Pure source-to-source transforms (libcst). Never imports torch."""

from .api import RewriteError, rewrite_source
from .calls import SiteTable

__all__ = ["RewriteError", "SiteTable", "rewrite_source"]
