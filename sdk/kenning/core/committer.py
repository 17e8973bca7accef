"""Committing a run's writes under its lease, riding out store outages.

A step that finished must not be thrown away because the store is briefly unreachable: a
write that fails with ``StoreUnavailable`` is retried (capped, jittered backoff) for as long
as the lease holds, judged by the store's clock against the lease expiry the store granted
(the worker keeps renewing it). Only a lost lease, or a lease that ran out during the
outage, abandons the run, and either is logged once.

A retried write may find that its earlier attempt did commit (the connection broke after
the ``COMMIT`` was sent): the step is then in the history, or the run already moved on to
the state the write asked for under this very epoch. Either counts as done.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Collection
from typing import TypeVar

from kenning.core.errors import LeaseLost, StoreUnavailable
from kenning.core.models import Lease, Step
from kenning.core.store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")
RETRY_FIRST = 0.05  # seconds before the first retry of a commit
RETRY_CAP = 2.0  # the longest pause between retries


class _RetryingCommits:
    """The runs of this process retrying a commit through an outage, logged as one: a
    WARNING when the first starts and one when the last is through, each run at debug."""

    def __init__(self) -> None:
        self.runs = 0

    def enter(self, run_id: str, remaining: float, exc: StoreUnavailable) -> None:
        self.runs += 1
        if self.runs == 1:
            log.warning("store unavailable; retrying the commit of run %s, and of any other "
                        "run that meets the outage, while leases hold (%.1f s left): %s",
                        run_id, remaining, exc)
        else:
            log.debug("run %s: retrying its commit while the lease holds", run_id)

    def leave(self, run_id: str, *, committed: bool) -> None:
        self.runs = max(0, self.runs - 1)
        log.debug("run %s: commit %s after the outage", run_id,
                  "went through" if committed else "given up")
        if self.runs == 0:
            log.warning("store reachable again: the commits held through the outage are done")


# one per process: an outage is felt by every run at once, and logged once for all
_RETRYING = _RetryingCommits()


class Abandoned(BaseException):
    """Unwinds a workflow whose lease was lost: another owner or a cancel took over."""


class LeaseCommitter:
    """Writes of one held run: fenced by its lease, retried through outages."""

    def __init__(self, store: Store, lease: Lease, lease_expires: float | None,
                 renewed_until: Callable[[], float | None] | None = None) -> None:
        self.store = store
        self.lease = lease
        self._claimed_until = lease_expires
        self._renewed_until = renewed_until

    def lease_expires(self) -> float | None:
        """The latest lease expiry the store granted (store time), if known."""
        renewed = self._renewed_until() if self._renewed_until is not None else None
        known = [t for t in (self._claimed_until, renewed) if t is not None]
        return max(known) if known else None

    async def write(self, make: Callable[[], Awaitable[T]], *, seqs: Collection[int] = (),
                    on_recorded: Callable[[Step], T] | None = None,
                    settled: Collection[str] = ()) -> T:
        """Run ``make()`` until it commits, the lease is lost, or the lease runs out.

        After an outage, a write one of whose steps ``seqs`` is found in the history, or whose
        ``LeaseLost`` shows the run in one of the ``settled`` statuses at this lease's epoch,
        had committed before: ``on_recorded(step)`` or ``None`` is returned for it."""
        run_id = self.lease.run_id
        delay = RETRY_FIRST
        outage: StoreUnavailable | None = None
        while True:
            try:
                if outage is not None and seqs:
                    recorded = await self._recorded(seqs)
                    if recorded is not None:
                        _RETRYING.leave(run_id, committed=True)
                        return on_recorded(recorded) if on_recorded is not None else None  # type: ignore[return-value]
                result = await make()
            except LeaseLost as exc:
                if outage is not None:
                    _RETRYING.leave(run_id, committed=False)
                if outage is not None and exc.epoch == self.lease.epoch and exc.status in settled:
                    log.info("run %s: the commit had gone through before the outage ended",
                             run_id)
                    return None  # type: ignore[return-value]
                self._log_lost(exc)
                raise Abandoned from None
            except StoreUnavailable as exc:
                remaining = self._remaining()
                if remaining is None or remaining <= 0:
                    if outage is not None:
                        _RETRYING.leave(run_id, committed=False)
                    log.warning("run %s: store unavailable and the lease of %s (epoch %d) has "
                                "run out; leaving the run to be resumed by any worker: %s",
                                run_id, self.lease.owner, self.lease.epoch, exc)
                    raise Abandoned from None
                if outage is None:
                    _RETRYING.enter(run_id, remaining, exc)
                outage = exc
                await asyncio.sleep(min(remaining, delay * random.uniform(0.5, 1.0)))
                delay = min(RETRY_CAP, delay * 2)
                continue
            if outage is not None:
                _RETRYING.leave(run_id, committed=True)
            return result

    def _remaining(self) -> float | None:
        expires = self.lease_expires()
        return None if expires is None else expires - self.store.clock()

    async def _recorded(self, seqs: Collection[int]) -> Step | None:
        history = await self.store.load_history(self.lease.run_id)
        return next((step for step in history if step.seq in seqs), None)

    def _log_lost(self, exc: LeaseLost) -> None:
        if exc.status == "cancelled":
            log.info("run %s was cancelled; stopping it on %s", self.lease.run_id,
                     self.lease.owner)
            return
        log.warning("run %s: lease lost by %s (epoch %d; new owner's epoch %s); abandoning "
                    "the run here: %s", self.lease.run_id, self.lease.owner, self.lease.epoch,
                    "unknown" if exc.epoch is None else exc.epoch, exc)
