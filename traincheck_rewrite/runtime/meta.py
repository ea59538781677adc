"""Meta variables attached to every record.

`current` is replaced, never mutated, so a record can hold a reference to it at no cost and still show the values
of its own moment.
"""

from __future__ import annotations

current: dict = {"step": 0}
program_stage = False  # the program sets `stage` itself (TrainCheck's annotate_stage): no automatic stage from then on
# Snapshots whose `evaluation` holds only until the loop they were made in turns out to be the training loop (a tracked
# model in eval mode with grad on, before the first optimizer step): id -> (snapshot, loop); steps.py keeps it, and
# `training_after_all` holds the ids whose loop did, for encode.relabelled.
provisional: dict[int, tuple[dict, int]] = {}
training_after_all: set[int] = set()


def update(**values) -> None:
    global current
    current = {**current, **values}


def discard(*keys: str) -> None:
    global current
    current = {k: v for k, v in current.items() if k not in keys}


def reset(values: dict) -> None:
    global current
    current = dict(values)
