"""The ``Store`` protocol: everything the engine asks of its database.

Both the SQLite and the PostgreSQL store implement it, and one contract test suite runs
against both. Times are unix seconds (floats) taken from the store's ``clock``. Every write
made under a ``Lease`` is fenced: if the run's epoch moved on (lease taken over, run
cancelled) the write changes nothing and raises ``LeaseLost``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from kenning.core.models import (
    AcceptResult,
    BuildCount,
    Chapter,
    ClaimedRun,
    ClaimScope,
    CloudEventRecord,
    Lease,
    NewRun,
    Notification,
    OutboxEntry,
    Run,
    RunCount,
    RunStatus,
    Step,
    Wait,
)

Listener = Callable[[Notification], None]


@dataclass(frozen=True, slots=True)
class EventWaitResult:
    """What ``begin_waits`` did: consumed an event already there, or not (suspended)."""

    consumed: Step | None


class Store(Protocol):
    """Durable state of runs, their history, events and the outbox."""

    clock: Callable[[], float]

    async def open(self) -> None:
        """Connect and apply migrations (safe when many processes start at once)."""

    async def close(self) -> None:
        """Release connections; pending group commits finish first."""

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the database answers."""

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` after each committed change; returns an unsubscribe function.

        Kinds: RUNNABLE (created or resumed; ``run_id=None`` means changes may have been
        missed), CLAIMED (a worker took it), WAITING (waits for an event, no deadline),
        TIMER (suspended until ``wake_at``), FINISHED, CANCELLED, OUTBOX."""

    # -- runs ---------------------------------------------------------------------------
    async def create_run(self, new: NewRun) -> tuple[Run, bool]:
        """Create a pending run; if the id exists return that run and ``False``."""

    async def create_runs(self, news: Sequence[NewRun]) -> list[tuple[bool, str]]:
        """Create many pending runs in one statement; for each, whether it was created
        and the workflow its id belongs to (an existing id is left unchanged)."""

    async def get_run(self, run_id: str) -> Run | None:
        """The run with this id, or ``None``."""

    async def list_runs(
        self,
        *,
        namespace: str | None = None,
        status: RunStatus | None = None,
        workflow: str | None = None,
        parent: str | None = None,
        limit: int = 100,
    ) -> list[Run]:
        """Runs, newest first, filtered (``parent``: the children of that run)."""

    async def load_history(self, run_id: str, *, chapter: int | None = None) -> list[Step]:
        """The run's whole history in sequence order (one query): its current chapter, or
        the closed chapter ``chapter``."""

    async def list_chapters(self, run_id: str) -> list[Chapter]:
        """The run's closed chapters (it continued as new), oldest first."""

    async def cancel_run(self, run_id: str, reason: str) -> Run:
        """Cancel an unfinished run (fencing out its worker) and, in the same commit, its
        unfinished descendants (child runs, recursively); each cancelled child addresses a
        ``CHILD_FINISHED_TYPE`` event to its parent. Finished runs are returned as they are.
        Raises ``RunNotFound``."""

    # -- worker -------------------------------------------------------------------------
    async def claim_runs(
        self,
        worker_id: str,
        *,
        limit: int,
        lease_seconds: float,
        workflows: Sequence[str] | None = None,
        run_ids: Sequence[str] | None = None,
        reclaim_own: bool = False,
        recovering: bool = True,
        scope: ClaimScope | None = None,
    ) -> list[ClaimedRun]:
        """Take up to ``limit`` runnable runs: pending, due, or with an expired lease.

        Taking a run whose lease expired (or, with ``reclaim_own``, a run still leased)
        counts one more in its ``recoveries``, unless ``recovering`` is false (the caller
        knows their holder, itself, was not lost); every fenced write that moves the run on
        (steps, waits, the end, a release) sets it back to 0.

        ``reclaim_own`` also takes runs leased to ``worker_id`` itself: a restarted process
        with the same worker id picks its unfinished runs up without waiting for expiry.
        ``scope`` keeps the claim to the worker's namespaces, pool and build (and records
        the build on runs claimed the first time); without it every namespace fits."""

    async def count_live_leases(self, worker_id: str) -> int:
        """How many runs ``worker_id`` holds under a lease that has not expired."""

    async def count_unfinished_by_build(
        self, *, due_before: float | None = None
    ) -> list[BuildCount]:
        """Unfinished runs grouped by (namespace, pool, workflow, build, upgrade policy).

        ``runnable`` counts those pending or running, and those waiting whose wake time
        is at or before ``due_before``."""

    async def renew_leases(
        self, worker_id: str, run_ids: Sequence[str], lease_seconds: float
    ) -> None:
        """Push the lease expiry of the runs this worker still holds."""

    async def record_attempts(self, lease: Lease, attempts: Mapping[int, int]) -> None:
        """Record, fenced, which activity attempts have started ({seq: attempt}), before
        they run: a worker lost during one counts it against ``max_attempts``. Replaces the
        run's ``activity_attempts``; does not count as progress for ``recoveries``."""

    async def release_run(self, lease: Lease) -> None:
        """Give a held run back as pending (worker shutting down); activity attempts it
        cut short are forgotten, not counted as lost."""

    async def append_steps(
        self, lease: Lease, steps: Sequence[Step], outbox: Sequence[CloudEventRecord] = (),
        *, attempts: Mapping[int, int] | None = None, children: Sequence[NewRun] = (),
    ) -> None:
        """Record steps (and the events they emit) in one commit; ``attempts``, when given,
        replaces the run's ``activity_attempts`` in the same commit (as ``record_attempts``)."""

    async def begin_waits(
        self, lease: Lease, waits: Sequence[Wait], steps: Sequence[Step] = (), *,
        next_ordinal: int, suspend: bool = True,
    ) -> EventWaitResult:
        """Record ``steps``; then, for the first event wait (by ``seq``) that has one,
        consume a matching event already there and record it at that wait's ``seq`` (kind
        EVENT, name ``wait.step_name``, ordinal ``next_ordinal``): an event addressed to the
        run at any time, or a kept event received since ``wait.started_at - wait.lookback``.
        The run keeps its lease then.

        Otherwise, with ``suspend``, suspend the run on all ``waits`` (event waits, timers,
        retries) and drop the lease: ``waiting_for_event`` if any is an event wait, else
        ``waiting_for_timer``; it wakes at the earliest ``wake_at``; an event matching any
        event wait (any of its types) resumes it, recorded at that wait's ``seq`` with
        ordinal ``next_ordinal``. Without ``suspend`` nothing more is written (the caller
        looks for an event while its activities run)."""

    async def finish_run(
        self,
        lease: Lease,
        status: RunStatus,
        *,
        result: str | None = None,
        error: str | None = None,
        steps: Sequence[Step] = (),
    ) -> None:
        """Record ``steps`` and end the run completed or failed. A child run (one with
        ``parent_run_id``) addresses a ``CHILD_FINISHED_TYPE`` event to its parent in the
        same commit, resuming the parent if it waits for it."""

    async def continue_run(self, lease: Lease, input: str, steps: Sequence[Step] = ()) -> int:
        """Record ``steps``, close the run's current chapter (its history and input are
        kept, reachable by ``load_history(chapter=)`` and ``list_chapters``) and make the run
        pending again with ``input`` and an empty history, under the same id; returns the
        new chapter's number."""

    async def next_wake_at(self) -> float | None:
        """The earliest due time among suspended runs, or ``None``."""

    # -- events -------------------------------------------------------------------------
    async def accept_events(
        self, namespace: str, events: Sequence[CloudEventRecord]
    ) -> list[AcceptResult]:
        """Commit events, deduplicated per namespace on (namespace, source, id), and resume
        the runs they match."""

    async def count_events(self) -> int:
        """How many events are kept (for operators and benchmarks)."""

    async def purge_expired(self) -> int:
        """Drop events past their retention, and the paths of wait keys that no wait uses
        any more; returns how many events."""

    async def purge_finished(self, *, before: float | None = None,
                             namespace: str | None = None, limit: int = 500) -> int:
        """Delete up to ``limit`` finished runs with their history, oldest first: those
        finished before ``before``, or by default past their namespace's retention.
        Unfinished runs are never touched; their closed chapters (continue-as-new) past the
        namespace's retention are dropped too. Returns how many runs were deleted."""

    async def set_finished_retention(self, namespace: str, seconds: float) -> None:
        """Keep the namespace's finished runs ``seconds`` after they finish (0: forever)."""

    async def finished_retention(self, namespace: str) -> float:
        """How long the namespace keeps finished runs, in seconds (0: forever)."""

    # -- outbox -------------------------------------------------------------------------
    async def due_outbox(self, limit: int, claim_seconds: float = 30.0) -> list[OutboxEntry]:
        """Claim the outbox entries whose next attempt is due: they are hidden from other
        dispatchers for ``claim_seconds`` (until published, retried, or the claim lapses)."""

    async def outbox_done(self, pk: int) -> None:
        """Remove a published entry."""

    async def outbox_retry(self, pk: int, next_attempt_at: float, error: str) -> None:
        """Count a failed publish and schedule the next."""

    async def outbox_dead(self, pk: int, error: str) -> None:
        """Mark an entry dead: its target refused it for good; it is kept, not retried."""

    async def list_outbox(self, *, dead: bool = False, limit: int = 100) -> list[OutboxEntry]:
        """Outbox entries, oldest first: the live ones, or (``dead``) the dead ones."""

    async def revive_outbox(self, pks: Sequence[int] | None = None) -> int:
        """Make dead entries (these ``pks``, or all when ``None``) due again with a fresh
        attempt count; returns how many were revived."""

    async def count_outbox(self, *, dead: bool = False) -> int:
        """How many live (or, with ``dead``, dead) entries the outbox holds."""

    # -- operator -----------------------------------------------------------------------
    async def count_active_runs(self, *, wake_before: float) -> list[RunCount]:
        """Runs that need a worker, grouped by (namespace, workflow, pool): pending and
        running ones, and suspended ones due to wake before ``wake_before`` (by indexes;
        no run is read)."""

    async def list_unfinished_runs(self, *, after: tuple[float, str] | None = None,
                                   limit: int = 1000) -> list[Run]:
        """Unfinished runs, oldest first by (``created_at``, ``run_id``), the page after
        ``after`` (the last run of the previous page): page through all of them."""
