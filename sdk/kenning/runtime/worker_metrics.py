"""A worker's Prometheus metrics, and the store wrapper through which its runs are counted.

The counters of what runs do (steps committed and how long a commit took, activity attempts
and failures, leases lost) are taken where the runs meet the store: the worker hands its
executions a ``MeteredStore`` that counts on the way through and changes nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kenning.core.errors import LeaseLost
from kenning.core.models import (
    CloudEventRecord,
    Lease,
    NewRun,
    RunStatus,
    Step,
    StepKind,
    Wait,
    WaitKind,
)
from kenning.core.store import EventWaitResult, Store

_COMMIT_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)


class WorkerMetrics:
    """The counters, gauges and histograms of one worker, on ``registry`` (a new one by
    default; pass a shared one to expose them next to other metrics)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.runs_held = Gauge("kenning_worker_runs_held", "Runs this worker holds a lease on.",
                               registry=r)
        self.claims = Counter("kenning_worker_claims", "Runs claimed by this worker.",
                              registry=r)
        self.steps_committed = Counter(
            "kenning_worker_steps_committed", "History steps committed by this worker's runs.",
            registry=r)
        self.step_commit_seconds = Histogram(
            "kenning_worker_step_commit_seconds",
            "Time for a run's step (and what it moves the run to) to be committed.",
            buckets=_COMMIT_BUCKETS, registry=r)
        self.lease_renewals = Counter("kenning_worker_lease_renewals",
                                      "Leases renewed by this worker.", registry=r)
        self.lease_losses = Counter(
            "kenning_worker_lease_losses",
            "Writes refused because the run's lease had moved on (taken over or cancelled).",
            registry=r)
        self.activity_attempts = Counter(
            "kenning_worker_activity_attempts", "Activity attempts that ended on this worker.",
            registry=r)
        self.activity_failures = Counter(
            "kenning_worker_activity_failures",
            "Activity attempts that failed (retried or final).", registry=r)
        self.outbox_backlog = Gauge(
            "kenning_outbox_backlog", "Outbox entries waiting to be published.", registry=r)
        self.outbox_dead_entries = Gauge(
            "kenning_outbox_dead_entries", "Outbox entries refused for good by their target.",
            registry=r)
        self.outbox_published = Counter(
            "kenning_outbox_published", "Outbox entries published.", registry=r)
        self.outbox_failures = Counter(
            "kenning_outbox_publish_failures",
            "Failed publish attempts that will be retried.", registry=r)
        self.outbox_dead = Counter(
            "kenning_outbox_dead", "Outbox entries marked dead (their target answered 4xx).",
            registry=r)

    def hold(self, active_runs: Callable[[], int]) -> None:
        """Read the held-runs gauge from ``active_runs`` at each scrape."""
        self.runs_held.set_function(lambda: float(active_runs()))

    def count_steps(self, steps: Sequence[Step]) -> None:
        """Count committed steps, and the activity attempts among them."""
        self.steps_committed.inc(len(steps))
        for step in steps:
            if step.kind is StepKind.ACTIVITY:
                self.activity_attempts.inc()
                if step.error is not None:
                    self.activity_failures.inc()

    def count_wait(self, wait: Wait) -> None:
        """A retry wait is an activity attempt that failed."""
        if wait.kind is WaitKind.RETRY:
            self.activity_attempts.inc()
            self.activity_failures.inc()


class MeteredStore:
    """A ``Store`` that counts what runs commit through it; everything else passes through."""

    def __init__(self, store: Store, metrics: WorkerMetrics) -> None:
        self._store = store
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def as_store(self) -> Store:
        """This wrapper typed as the ``Store`` it stands in for."""
        return cast(Store, self)

    async def _timed(self, write: Any, steps: Sequence[Step]) -> Any:
        started = time.perf_counter()
        try:
            result = await write
        except LeaseLost:
            self._metrics.lease_losses.inc()
            raise
        self._metrics.step_commit_seconds.observe(time.perf_counter() - started)
        self._metrics.count_steps(steps)
        return result

    async def append_steps(self, lease: Lease, steps: Sequence[Step],
                           outbox: Sequence[CloudEventRecord] = (), *,
                           attempts: Mapping[int, int] | None = None,
                           children: Sequence[NewRun] = ()) -> None:
        """Counted ``Store.append_steps``."""
        await self._timed(self._store.append_steps(lease, steps, outbox, attempts=attempts,
                                                   children=children), steps)

    async def begin_waits(self, lease: Lease, waits: Sequence[Wait],
                          steps: Sequence[Step] = (), *, next_ordinal: int,
                          suspend: bool = True) -> EventWaitResult:
        """Counted ``Store.begin_waits``."""
        result: EventWaitResult = await self._timed(
            self._store.begin_waits(lease, waits, steps, next_ordinal=next_ordinal,
                                    suspend=suspend), steps)
        if suspend and result.consumed is None:
            for wait in waits:
                self._metrics.count_wait(wait)
        return result

    async def continue_run(self, lease: Lease, input: str, steps: Sequence[Step] = ()) -> int:
        """Counted ``Store.continue_run``."""
        chapter: int = await self._timed(self._store.continue_run(lease, input, steps), steps)
        return chapter

    async def finish_run(self, lease: Lease, status: RunStatus, *, result: str | None = None,
                         error: str | None = None, steps: Sequence[Step] = ()) -> None:
        """Counted ``Store.finish_run``."""
        await self._timed(self._store.finish_run(lease, status, result=result, error=error,
                                                 steps=steps), steps)
