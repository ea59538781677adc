"""TrainCheck's annotation API, for programs written for TrainCheck.

Such programs annotate their own stages and meta variables with `from traincheck import annotate_stage` and
`from traincheck.instrumentor import META_VARS` (`meta_vars` before 0.2.0). The rewriter points those imports here
(rewrite/traincheck_imports.py), so under tc-rewrite the program starts whether or not traincheck is installed, and
what it annotates is on the records: a stage it sets is the records' `stage` (the automatic stage stops), a `step`
it sets is the records' `step` (the automatic counter stops), any other key is one more meta variable. An installed
traincheck is left alone: its other names are imported from it as before.
"""

from __future__ import annotations

import sys

# traincheck.config.config.ALL_STAGE_NAMES (0.2.0): what annotate_stage accepts.
ALL_STAGE_NAMES = {"init", "training", "evaluation", "inference", "testing", "checkpointing", "preprocessing", "postprocessing"}


def _recorder():
    recorder = sys.modules.get("traincheck_rewrite.runtime.recorder")
    return recorder if recorder is not None and recorder.enabled() else None


class MetaVars(dict):
    """TrainCheck's META_VARS: a dict the program reads and writes; every write also sets the meta variable on the
    records from then on (TrainCheck's collector puts this very dict on its records)."""

    def __setitem__(self, key, value) -> None:
        dict.__setitem__(self, key, value)
        recorder = _recorder()
        if recorder is not None:
            recorder.set_meta(str(key), value)

    def __delitem__(self, key) -> None:
        dict.__delitem__(self, key)
        _forget(key)

    def update(self, *args, **kwargs) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __ior__(self, other):
        self.update(other)
        return self

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def pop(self, key, *default):
        had = key in self
        value = dict.pop(self, key, *default)
        if had:
            _forget(key)
        return value

    def popitem(self):
        key, value = dict.popitem(self)
        _forget(key)
        return key, value

    def clear(self) -> None:
        for key in list(self):
            del self[key]


def _forget(key) -> None:
    """A key the program removed leaves the records (step and stage stay: every record has them)."""
    if key not in ("step", "stage") and _recorder() is not None:
        from . import meta

        meta.discard(str(key))


META_VARS = MetaVars(step=0)  # traincheck.instrumentor.caches.META_VARS starts so
meta_vars = META_VARS  # its name before traincheck 0.2.0


def get_meta_vars() -> dict:
    """traincheck.instrumentor.tracer.get_meta_vars."""
    return META_VARS


def annotate_stage(stage_name: str) -> None:
    """The stage of the records from now on, as traincheck.annotate_stage (which accepts only ALL_STAGE_NAMES)."""
    assert stage_name in ALL_STAGE_NAMES, f"Invalid stage name: {stage_name}, valid ones are {ALL_STAGE_NAMES}"
    META_VARS["stage"] = stage_name


def annotate_answer_start_token_ids(answer_start_token_id: int, include_start_token: bool = False) -> None:
    """Accepted and ignored: TrainCheck uses it to cut `generate` outputs to the answer, which we do not record."""


def start_step() -> None:
    """traincheck.instrumentor.control.start_step: a training iteration begins (stage `training`, step + 1)."""
    if META_VARS.get("stage") != "training":
        annotate_stage("training")
    META_VARS["step"] = META_VARS.get("step", 0) + 1


def start_eval_step() -> None:
    """traincheck.instrumentor.control.start_eval_step: an evaluation iteration begins (eval_step + 1)."""
    META_VARS["eval_step"] = META_VARS.get("eval_step", 0) + 1
