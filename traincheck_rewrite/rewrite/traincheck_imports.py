"""Point a program's imports of TrainCheck's annotation API at the runtime's equivalents (runtime/traincheck_api.py).

`from traincheck import annotate_stage` becomes `from traincheck_rewrite.runtime.traincheck_api import
annotate_stage`, on its own line: the program starts without traincheck installed, and its annotations reach the
records (with the real traincheck they would go to a dict nobody records). An import that also names something
else of traincheck (`from traincheck import annotate_stage, Instrumentor`) is kept as it is, as the plain run needs
it, and the API names are bound again from the runtime right after it, on the same line. Nothing else is touched:
no `traincheck` module is made, so an installed traincheck serves its other uses as before.
"""

from __future__ import annotations

import re

import libcst as cst

from .dispatch import Transformer
from .names import dotted_name

API_MODULE = "traincheck_rewrite.runtime.traincheck_api"

# The annotation API by the traincheck module a program imports it from (0.2.0, and `meta_vars` of earlier ones).
API_NAMES = {
    "traincheck": {"annotate_stage", "annotate_answer_start_token_ids"},
    "traincheck.developer.annotations": {"annotate_stage", "annotate_answer_start_token_ids", "META_VARS", "meta_vars"},
    "traincheck.instrumentor": {"META_VARS", "meta_vars", "get_meta_vars"},
    "traincheck.instrumentor.caches": {"META_VARS", "meta_vars"},
    "traincheck.instrumentor.tracer": {"META_VARS", "meta_vars", "get_meta_vars"},
    "traincheck.instrumentor.control": {"META_VARS", "annotate_stage", "start_step", "start_eval_step"},
}


def _api_module() -> cst.Attribute | cst.Name:
    return cst.parse_expression(API_MODULE)  # type: ignore[return-value]


class TraincheckImports(Transformer):
    def __init__(self) -> None:
        super().__init__()
        self.redirected = 0

    def leave_ImportFrom(self, original: cst.ImportFrom, updated: cst.ImportFrom):
        if updated.relative or updated.module is None or isinstance(updated.names, cst.ImportStar):
            return updated
        api = API_NAMES.get(dotted_name(updated.module) or "")
        if not api:
            return updated
        ours = [alias for alias in updated.names if dotted_name(alias.name) in api]
        if not ours:
            return updated
        self.redirected += 1
        if len(ours) == len(updated.names):
            return updated.with_changes(module=_api_module())
        rebound = cst.ImportFrom(
            module=_api_module(),
            names=[cst.ImportAlias(name=a.name, asname=a.asname) for a in ours],
        )
        return cst.FlattenSentinel([updated, rebound])


def redirect_traincheck_imports(module: cst.Module) -> cst.Module:
    """`module` with its imports of TrainCheck's annotation API pointed at the runtime (the same lines)."""
    return module.visit(TraincheckImports())


def imports_traincheck(text: str) -> bool:
    """Whether a source may import from traincheck (cheap: most files never name it)."""
    return re.search(r"\bfrom\s+traincheck\b", text) is not None
