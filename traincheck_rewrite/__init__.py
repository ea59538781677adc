"""traincheck_rewrite: trace PyTorch training runs by rewriting their source, for TrainCheck.

`annotate(**values)` and `with annotated(**values):` add meta variables to the records of a traced run; without
the tool (or before tracing starts) they do nothing, so they can stay in the code.
"""

from __future__ import annotations

import contextlib
import sys

__version__ = "0.1.0"
__all__ = ["annotate", "annotated"]


def _recorder():
    recorder = sys.modules.get("traincheck_rewrite.runtime.recorder")
    return recorder if recorder is not None and recorder.enabled() else None


def annotate(**values) -> None:
    """Set meta variables on every record from now on (`annotate(epoch=epoch)`)."""
    recorder = _recorder()
    if recorder is not None:
        for key, value in values.items():
            recorder.set_meta(key, value)


@contextlib.contextmanager
def annotated(**values):
    """Set meta variables for the records of a block, then restore what they were."""
    recorder = _recorder()
    if recorder is None:
        yield
        return
    from .runtime import meta

    missing = object()
    saved = {key: meta.current.get(key, missing) for key in values}
    annotate(**values)
    try:
        yield
    finally:
        meta.discard(*(k for k, v in saved.items() if v is missing))
        meta.update(**{k: v for k, v in saved.items() if v is not missing})
