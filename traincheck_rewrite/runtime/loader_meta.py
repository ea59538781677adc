"""DataLoader workers carry the meta variables of the moment the main process asked for their batch.

A worker process keeps the meta it had when it started (step 0, stage init for workers made by `iter(loader)`
before training), while it fetches batches the main process asks for during training. The main process draws each
batch's indices from the sampler (`_MultiProcessingDataLoaderIter._next_index`) and sends them to a worker through
its index queue: here the indices travel as `Asked(index, meta)`, with the main process's `meta.current` of that
moment (a dict that is replaced, never changed, so it is sent as it was), and the worker's fetcher
(`_MapDatasetFetcher.fetch`, `_IterableDatasetFetcher.fetch`) takes the meta before it fetches, keeping only its own
`worker_id` (and from then on does not recompute the stage, since it sees no training loop), and hands the dataset
the indices alone. One small dict per batch, pickled with the indices; nothing is
changed in the program's objects. The classes are patched when `torch.utils.data.dataloader` is imported, in every
process the recorder runs in (forked workers inherit the patch; a spawned worker imports the instrumented script,
which starts the recorder, before it unpickles a batch).
"""

from __future__ import annotations

import functools

from . import meta, recorder

LOADER_MODULE = "torch.utils.data.dataloader"


class Asked:
    """A batch's indices with the meta of the main process when it asked for them."""

    __slots__ = ("index", "meta")

    def __init__(self, index, meta_vars: dict) -> None:
        self.index, self.meta = index, meta_vars

    def __reduce__(self):
        return Asked, (self.index, self.meta)


def install() -> None:
    from .after_import import after_import

    after_import(LOADER_MODULE, _patch)


def _patch(dataloader) -> None:
    iterator = dataloader._MultiProcessingDataLoaderIter
    if getattr(iterator._next_index, "_tc_asked", False):
        return
    iterator._next_index = _asking(iterator._next_index, iterator)
    fetch = dataloader._utils.fetch
    for fetcher in (fetch._MapDatasetFetcher, fetch._IterableDatasetFetcher):
        fetcher.fetch = _fetching(fetcher.fetch)


def _asking(next_index, iterator: type):
    @functools.wraps(next_index)
    def _next_index(self):
        if type(self) is not iterator:  # a library's own iterator may send indices to workers torch's fetchers skip
            return next_index(self)
        return Asked(next_index(self), meta.current)

    _next_index._tc_asked = True
    return _next_index


def _fetching(fetch):
    @functools.wraps(fetch)
    def fetch_asked(self, possibly_batched_index):
        if type(possibly_batched_index) is Asked:
            state = recorder._state
            if state is not None:
                state.steps.sent = True  # the worker's own stage (it sees no training loop) would override it
            worker = meta.current.get("worker_id")
            sent = possibly_batched_index.meta
            meta.reset(sent if worker is None else {**sent, "worker_id": worker})
            possibly_batched_index = possibly_batched_index.index
        return fetch(self, possibly_batched_index)

    return fetch_asked
