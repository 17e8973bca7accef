"""Purging finished runs and their history, in small batches (the worker's purge loop and
``kenning runs purge``)."""

from __future__ import annotations

import asyncio

from kenning.core.store import Store

PURGE_BATCH = 500  # runs per statement: short enough that no lock is held for long


async def purge_finished_runs(store: Store, *, before: float | None = None,
                              namespace: str | None = None, batch: int = PURGE_BATCH,
                              max_batches: int | None = None, pause: float = 0.0) -> int:
    """Delete finished runs past their namespace's retention (or finished before
    ``before``), a batch per statement until none is left; returns how many."""
    total, batches = 0, 0
    while max_batches is None or batches < max_batches:
        purged = await store.purge_finished(before=before, namespace=namespace, limit=batch)
        total += purged
        batches += 1
        if purged < batch:
            break
        await asyncio.sleep(pause)  # let hot work in between batches
    return total
