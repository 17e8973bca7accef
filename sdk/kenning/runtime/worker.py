"""The worker: claims runnable runs, executes them, renews their leases.

Wake-ups are pushed: the store's notifications (in-process, or LISTEN/NOTIFY across
processes) say when a run became runnable, and the nearest timer sets a single alarm.
The poll interval is only the fallback for changes this process cannot hear about.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

from kenning.core.committer import Abandoned
from kenning.core.definitions import Registry
from kenning.core.errors import LoopFailed, StoreUnavailable
from kenning.core.execution import Outcome, RunExecution
from kenning.core.models import (
    ClaimedRun,
    ClaimScope,
    Lease,
    Notification,
    NotificationKind,
    RunStatus,
)
from kenning.core.outage import Outage
from kenning.core.recovery import DEFAULT_MAX_RECOVERIES
from kenning.core.store import Store
from kenning.runtime.heap import release_free_memory
from kenning.runtime.retention import purge_finished_runs
from kenning.runtime.watchdog import LoopWatchdog
from kenning.runtime.worker_metrics import MeteredStore, WorkerMetrics

log = logging.getLogger(__name__)

PURGE_BATCHES_PER_ROUND = 100  # finished runs purged per round: at most 100 small batches
# after this many executions ended, a worker idle for TRIM_IDLE_SECONDS gives back free memory
TRIM_AFTER_RUNS = 64
TRIM_IDLE_SECONDS = 1.0
_ORPHAN_SCAN = 1000  # running runs looked at for orphans of this worker after an outage


@dataclass(frozen=True)
class WorkerOptions:
    """How much a worker takes on and how it keeps its leases."""

    max_runs: int = 500
    claim_batch: int = 64
    lease_seconds: float = 30.0
    poll_interval: float = 1.0
    purge_interval: float = 60.0
    # workflow or activity code that keeps the event loop from turning this long is
    # reported with its stack (None: no watchdog); fail_deadlocked_runs also fails the run
    deadlock_threshold: float | None = 2.0
    fail_deadlocked_runs: bool = False
    # a run whose worker got lost this many times in a row (outside its progress) fails
    max_recoveries: int = DEFAULT_MAX_RECOVERIES


class Worker:
    """Runs the workflows of ``registry`` that the store says are runnable."""

    def __init__(
        self,
        store: Store,
        registry: Registry,
        worker_id: str,
        options: WorkerOptions | None = None,
        on_outcome: Callable[[str, Outcome], None] | None = None,
        *,
        metrics: WorkerMetrics | None = None,
        scope: ClaimScope | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.worker_id = worker_id
        self.options = options or WorkerOptions()
        self.scope = scope
        self._on_outcome = on_outcome
        self._active: dict[str, tuple[asyncio.Task[None], Lease]] = {}
        self._wakeup = asyncio.Event()
        self._alarm: float | None = None
        self._alarm_known = False
        self._ended_since_trim = 0
        self._trim: asyncio.TimerHandle | None = None
        self._stopping = False
        self._renewed_until: float | None = None  # store time the last renewal granted
        threshold = self.options.deadlock_threshold
        self.watchdog = None if threshold is None else LoopWatchdog(
            threshold, fail_runs=self.options.fail_deadlocked_runs,
            registry=None if metrics is None else metrics.registry)
        self._loops: list[asyncio.Task[None]] = []
        # runs this worker dropped on a store error, still leased to it: taken back as soon
        # as the store answers, rather than after their lease expires
        self._abandoned: set[str] = set()
        self.metrics = metrics
        self._run_store = store
        if metrics is not None:
            metrics.hold(lambda: len(self._active))
            self._run_store = MeteredStore(store, metrics).as_store()

    @property
    def active_runs(self) -> int:
        """How many runs this worker holds right now."""
        return len(self._active)

    def wake(self) -> None:
        """Look for runnable runs and due timers now (a test's clock moved, say)."""
        self._alarm, self._alarm_known = None, False
        self._wakeup.set()

    async def run(self) -> None:
        """Work until cancelled; on the way out, hand held runs back.

        Store outages are ridden out (backoff, logged once each way); a loop that dies of
        anything else ends ``run`` with that error, so that the process can say so.
        """
        unsubscribe = self.store.subscribe(self._on_notification)
        self._loops = [asyncio.create_task(self._claim_loop(), name="kenning-claim"),
                       asyncio.create_task(self._renew_loop(), name="kenning-renew"),
                       asyncio.create_task(self._purge_loop(), name="kenning-purge")]
        if self.watchdog is not None:
            self._loops.append(asyncio.create_task(self.watchdog.run(), name="kenning-watchdog"))
        try:
            done, _ = await asyncio.wait(self._loops, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                raise LoopFailed(f"worker {self.worker_id}: its {task.get_name()} loop "
                                 f"died of {type(exc).__name__}: {exc}; the process must "
                                 "be restarted") from exc
        finally:
            self._stopping = True
            unsubscribe()
            for task in self._loops:
                task.cancel()
            await asyncio.gather(*self._loops, return_exceptions=True)
            await self._stop_active()
            if self._trim is not None:
                self._trim.cancel()
                self._trim = None

    @property
    def alive(self) -> bool:
        """True while every loop of ``run`` is running."""
        return bool(self._loops) and not any(task.done() for task in self._loops)

    async def _claim_loop(self) -> None:
        outage = Outage(f"worker {self.worker_id} claiming runs", log)
        reclaim_own = True
        while True:
            try:
                if outage.down:
                    await self._find_orphans()
                await self._claim(reclaim_own=reclaim_own)
                reclaim_own = False
                outage.recovered()
                await self._sleep_until_needed()
            except StoreUnavailable as exc:
                self._alarm_known = False  # re-read the nearest timer once the store is back
                self._wakeup.clear()
                await outage.wait(exc, self._wakeup)

    async def _find_orphans(self) -> None:
        """After an outage: runs leased to this worker that it does not hold (a claim that
        committed but whose answer was lost) are taken back now, not after their lease."""
        running = await self.store.list_runs(status=RunStatus.RUNNING, limit=_ORPHAN_SCAN)
        self._abandoned.update(run.run_id for run in running
                               if run.lease_owner == self.worker_id
                               and run.run_id not in self._active)

    # -- waking -------------------------------------------------------------------------
    def _on_notification(self, note: Notification) -> None:
        if note.kind is NotificationKind.RUNNABLE:
            self._wakeup.set()
        elif note.kind is NotificationKind.TIMER and note.wake_at is not None:
            if self._alarm is None or note.wake_at < self._alarm:
                self._alarm = note.wake_at
                self._wakeup.set()
        elif note.kind is NotificationKind.CANCELLED and note.run_id in self._active:
            self._active[note.run_id][0].cancel()

    async def _sleep_until_needed(self) -> None:
        if not self._alarm_known:
            self._alarm = await self.store.next_wake_at()
            self._alarm_known = True
        timeout = self.options.poll_interval
        if self._alarm is not None:
            timeout = min(timeout, max(0.0, self._alarm - self.store.clock()))
        woken = self._wakeup.is_set()
        if timeout > 0 and not woken:
            with contextlib.suppress(TimeoutError):
                # not wait_for: on Python 3.11 it swallows a cancel that arrives as the event
                # is set, and the worker would then never stop
                async with asyncio.timeout(timeout):
                    await self._wakeup.wait()
                woken = True
        self._wakeup.clear()
        alarm_rang = self._alarm is not None and self._alarm <= self.store.clock()
        if alarm_rang or not woken:
            # after this claim, re-read the nearest timer: this one is being served, and the
            # fallback poll also catches timers set by processes we cannot hear
            self._alarm = None
            self._alarm_known = False

    def _claim_scope(self) -> ClaimScope | None:
        """The worker's scope, with the auto-upgrading workflows it serves right now."""
        if self.scope is None:
            return None
        return replace(self.scope, auto_upgrade=tuple(self.registry.auto_upgrade))

    async def _claim(self, *, reclaim_own: bool = False) -> None:
        scope = self._claim_scope()
        if self._abandoned:
            ids = sorted(self._abandoned - self._active.keys())
            if ids:
                claimed = await self.store.claim_runs(
                    self.worker_id, limit=len(ids), lease_seconds=self.options.lease_seconds,
                    workflows=self.registry.names, run_ids=ids, reclaim_own=True,
                    scope=scope, recovering=False)  # dropped by this worker, not lost with it
                if self.metrics is not None:
                    self.metrics.claims.inc(len(claimed))
                for item in claimed:
                    self._launch(item)
            self._abandoned.difference_update(ids)
        while not self._stopping:
            free = self.options.max_runs - len(self._active)
            if free <= 0:
                return
            want = min(free, self.options.claim_batch)
            claimed = await self.store.claim_runs(
                self.worker_id, limit=want, lease_seconds=self.options.lease_seconds,
                workflows=self.registry.names, reclaim_own=reclaim_own, scope=scope)
            if self.metrics is not None:
                self.metrics.claims.inc(len(claimed))
            for item in claimed:
                self._launch(item)
            if len(claimed) < want:
                return

    # -- running ------------------------------------------------------------------------
    def _launch(self, claimed: ClaimedRun) -> None:
        run_id = claimed.run.run_id
        task = asyncio.create_task(self._execute(claimed), name=f"kenning-run-{run_id}")
        self._active[run_id] = (task, claimed.lease)

    async def _execute(self, claimed: ClaimedRun) -> None:
        run_id = claimed.run.run_id
        outcome = Outcome.ABANDONED
        dropped = False
        try:
            definition = self.registry.get(claimed.run.workflow)
            execution = RunExecution(self._run_store, definition, claimed, self.store.clock,
                                     lease_expiry=lambda: self._renewed_until,
                                     max_recoveries=self.options.max_recoveries)
            outcome = await execution.execute()
            dropped = outcome is Outcome.ABANDONED
            if outcome is Outcome.SUSPENDED and execution.suspended_until is not None:
                until = execution.suspended_until
                if self._alarm is None or until < self._alarm:
                    self._alarm = until
        except Abandoned:  # the last commit (finishing the run) met a store error
            dropped = True
        except asyncio.CancelledError:
            if not self._stopping:
                log.info("run %s stopped on %s: cancelled", run_id, self.worker_id)
            return
        except Exception:
            log.exception("run %s crashed the worker's executor; it will be retried", run_id)
            with contextlib.suppress(Exception):
                await self.store.release_run(claimed.lease)
        finally:
            self._active.pop(run_id, None)
            self._wakeup.set()
            self._ended_since_trim += 1
            if not self._active and self._ended_since_trim >= TRIM_AFTER_RUNS \
                    and self._trim is None:
                self._trim = asyncio.get_running_loop().call_later(TRIM_IDLE_SECONDS,
                                                                   self._trim_if_idle)
        if dropped and not self._stopping:
            self._abandoned.add(run_id)
        if self._on_outcome is not None:
            self._on_outcome(run_id, outcome)

    def _trim_if_idle(self) -> None:
        """Still idle after a burst: give the heap's free pages back (``heap``)."""
        self._trim = None
        if not self._active:
            self._ended_since_trim = 0
            release_free_memory()

    async def _stop_active(self) -> None:
        held = list(self._active.values())
        for task, _lease in held:
            task.cancel()
        if held:
            await asyncio.gather(*(t for t, _ in held), return_exceptions=True)
        for _task, lease in held:
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.release_run(lease))

    async def _renew_loop(self) -> None:
        outage = Outage(f"worker {self.worker_id} renewing leases", log)
        interval = self.options.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            if not self._active:
                continue
            try:
                granted = self.store.clock() + self.options.lease_seconds
                await self.store.renew_leases(self.worker_id, list(self._active),
                                              self.options.lease_seconds)
            except StoreUnavailable as exc:
                outage.failed(exc)
                continue
            self._renewed_until = granted
            outage.recovered()
            if self.metrics is not None:
                self.metrics.lease_renewals.inc(len(self._active))

    async def _purge_loop(self) -> None:
        outage = Outage(f"worker {self.worker_id} purging expired events and runs", log)
        while True:
            await asyncio.sleep(self.options.purge_interval)
            try:
                await self.store.purge_expired()
                await purge_finished_runs(self.store, max_batches=PURGE_BATCHES_PER_ROUND)
            except StoreUnavailable as exc:
                outage.failed(exc)
                continue
            outage.recovered()
