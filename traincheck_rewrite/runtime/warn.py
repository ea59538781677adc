"""The runtime's only way to speak: one line on stderr, once."""

from __future__ import annotations

import sys

_warned: set[str] = set()


def warn_once(message: str, key: str | None = None) -> None:
    """One line on stderr, once per process for each message (or each `key`)."""
    key = key or message
    if key in _warned:
        return
    _warned.add(key)
    try:
        sys.stderr.write(f"traincheck_rewrite: warning: {message}\n")
        sys.stderr.flush()
    except Exception:
        pass
