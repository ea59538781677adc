"""Trace files: reading, summaries, exports. Independent of the runtime that writes them."""

from .reader import ReadStats, read_records

__all__ = ["ReadStats", "read_records"]
