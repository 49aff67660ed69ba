"""Keeping Python's cyclic garbage collector out of the seconds a short run waits for.

Importing torch, MLflow and their dependencies creates about a million objects. While they are
made, the collector runs a full collection each time the heap has grown by a quarter, and each
walks every object made so far.
What is imported or built is not garbage, so these walks find nothing, yet they are a large part
of a one-epoch run (docs/results/command_timings.md). A job therefore pauses the collector while
it imports and builds, and while it logs its results; the training loop runs with the collector
on, and what existed when it started is frozen, so that its collections skip it. Reference
counting frees objects as usual throughout.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator


@contextlib.contextmanager
def job_scope() -> Iterator[None]:
    """A job, with collection paused until :func:`resume_collection` and after
    :func:`pause_collection`.

    On leaving, collection is on and nothing is frozen: in a process that runs jobs one after
    another (a sweep's basic launcher, a search), the next job's collections free the cycles
    that this one left."""
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.enable()


def resume_collection() -> None:
    """Collect again, skipping every object that exists now."""
    gc.freeze()
    gc.enable()


def pause_collection() -> None:
    gc.disable()
