"""Pure source-to-source transforms (libcst). Never imports torch."""

from .api import RewriteError, rewrite_source
from .calls import SiteTable
from .models import Bindings

__all__ = ["Bindings", "RewriteError", "SiteTable", "rewrite_source"]
