"""``WorkflowRun`` events -> the store: start new runs in batches, cancel deleted ones.

The informer hands over every event; this keeps the directory current and:

- a resource with no phase yet gets its run started: checked at once (a spec or input the
  store would refuse gets a Warning Event), queued, and created with whatever else is
  queued in one statement (``Store.create_runs``, idempotent on the run id). An idle
  operator starts a run in one round trip; a backlog of thousands takes a few statements.
  The first status patch of a run it created needs no read of the store (``RunSync.mark``
  with the run as created);
- a resource being deleted that carries Kenning's finalizer gets its run cancelled, then
  the finalizer removed; one deleted before it had the finalizer is cancelled when it is
  gone; a spec change (new ``generation``) reaches ``status.observedGeneration``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping
from typing import Any

from pydantic import ValidationError

from kenning.core.definitions import encode_input, input_from_json
from kenning.core.errors import KenningError, RunNotFound
from kenning.core.models import NewRun, Run, RunStatus
from kenning.core.store import Store
from kenning.core.validation import validate_new_run
from kenning_operator.directory import RunDirectory, RunRef, run_ref, spec_of
from kenning_operator.finalizer import remove_finalizer
from kenning_operator.kube import KubeClient
from kenning_operator.metrics import Metrics
from kenning_operator.outage import TRANSIENT, LoopSupervisor, Outage
from kenning_operator.resources import CR_NAME_LABEL, CR_UID_LABEL, FINISHED_PHASES
from kenning_operator.sync import RunSync

log = logging.getLogger(__name__)

START_BATCH = 1_000
"""Most runs created in one statement."""
STARTERS = 2
"""Statements creating runs in flight at once (one fills while the other commits)."""


class Rejected(KenningError):
    """A resource whose run cannot be started (invalid spec, run id of another workflow)."""


class RunIntake:
    """What the operator does with each ``WorkflowRun`` event."""

    def __init__(self, store: Store, kube: KubeClient, runs: RunDirectory, sync: RunSync,
                 metrics: Metrics, on_started: Any = lambda: None) -> None:
        self.store = store
        self.kube = kube
        self.runs = runs
        self.sync = sync
        self.metrics = metrics
        self._on_started = on_started
        self.started: set[str] = set()
        """Run ids this process started or adopted (the store call is made once)."""
        self.rejected: set[str] = set()
        """Uids of resources that cannot be started (invalid spec, run id taken)."""
        self.finalizing: set[str] = set()
        """Uids of deleted resources whose run is being cancelled."""
        self.cancelled: set[str] = set()
        """Uids of deleted resources whose run was cancelled (nothing more when gone)."""
        self._queue: dict[str, tuple[RunRef, NewRun]] = {}
        """Starts to make, by run id, in order of arrival."""
        self._in_flight: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Future[None]] = set()
        self._outage = Outage("starting runs in the store")
        self.supervisor: LoopSupervisor | None = None
        self.batches = 0
        """Statements that created runs so far."""

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Start the loops that create queued runs."""
        self._tasks = [asyncio.create_task(self._starter(), name=f"kenning-op-start-{i}")
                       for i in range(STARTERS)]
        if self.supervisor is not None:
            for task in self._tasks:
                self.supervisor.watch(task)

    async def stop(self) -> None:
        """Stop starting runs and cancel the cancellations under way (the next operator
        takes them up: the resources keep their finalizer)."""
        tasks = [*self._tasks, *self._background]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []
        self._background.clear()

    @property
    def queued(self) -> int:
        """Runs waiting to be started."""
        return len(self._queue)

    # -- events -------------------------------------------------------------------------
    def on_event(self, kind: str, body: Mapping[str, Any]) -> None:
        """One watch event (``ADDED``, ``MODIFIED``, ``DELETED``) of a ``WorkflowRun``."""
        if kind == "DELETED":
            gone = self.runs.remove(str((body.get("metadata") or {}).get("uid")))
            if gone is not None:
                self._forget(gone)
            return
        try:
            ref = run_ref(body)
        except (KeyError, TypeError, ValueError):
            return  # not a resource the operator can read (no name)
        previous = self.runs.put(ref)
        if previous is not None and previous.run_id != ref.run_id:
            self._queue.pop(previous.run_id, None)
        self.sync.resource_seen(ref)
        if ref.deleting:
            self._queue.pop(ref.run_id, None)
            if ref.finalized:
                self._spawn(self.finalize(ref))
            return
        if self.needs_start(ref):
            self._submit(ref, body)
        elif previous is None and ref.phase is None and ref.uid not in self.rejected:
            self.sync.mark(ref.run_id)  # a new resource for a run started already
        elif previous is not None and previous.generation != ref.generation:
            self.sync.mark(ref.run_id)  # observedGeneration, TTL, timeout

    def on_listed(self, uids: set[str], namespace: str | None = None) -> None:
        """A fresh listing (of ``namespace``, or of all): forget the resources it no longer
        holds (deleted while no watch was open)."""
        for ref in self.runs:
            if ref.uid not in uids and (namespace is None or ref.namespace == namespace):
                gone = self.runs.remove(ref.uid)
                if gone is not None:
                    self._forget(gone)

    def _forget(self, gone: RunRef) -> None:
        self.sync.resource_gone(gone)
        self.started.discard(gone.run_id)
        self._queue.pop(gone.run_id, None)
        self.rejected.discard(gone.uid)
        if gone.uid in self.cancelled:
            self.cancelled.discard(gone.uid)
        elif gone.phase not in FINISHED_PHASES:
            # Deleted before the finalizer was added (or without it): cancel here instead.
            self._spawn(self.cancel(gone))

    def needs_start(self, ref: RunRef) -> bool:
        """Whether a resource's run is still to be started by this process."""
        return ref.phase is None and not ref.deleting and ref.run_id not in self.started \
            and ref.uid not in self.rejected

    def retry(self) -> None:
        """The sweep: finish the deletions not finalized yet (an outage interrupted them)."""
        for ref in self.runs:
            if ref.deleting and ref.finalized and ref.uid not in self.finalizing:
                self._spawn(self.finalize(ref))

    # -- starting -----------------------------------------------------------------------
    def _submit(self, ref: RunRef, body: Mapping[str, Any]) -> None:
        if ref.run_id in self._queue:
            self._queue[ref.run_id] = (ref, self._queue[ref.run_id][1])
            return
        try:
            new = new_run(ref, body)
        except Rejected as exc:
            self._reject(ref, str(exc))
            return
        self._queue[ref.run_id] = (ref, new)
        self._wake.set()

    def _reject(self, ref: RunRef, why: str) -> None:
        self.rejected.add(ref.uid)
        self._queue.pop(ref.run_id, None)
        log.warning("WorkflowRun %s/%s not started: %s", ref.namespace, ref.name, why)
        self._spawn(self.sync.post_event(ref, "Warning", "InvalidSpec", why))

    def _take(self) -> list[tuple[RunRef, NewRun]]:
        batch: list[tuple[RunRef, NewRun]] = []
        for run_id, item in self._queue.items():
            if run_id not in self._in_flight:
                batch.append(item)
                if len(batch) >= START_BATCH:
                    break
        for ref, _new in batch:
            del self._queue[ref.run_id]
            self._in_flight.add(ref.run_id)
        return batch

    async def _starter(self) -> None:
        while True:
            await self._wake.wait()
            batch = self._take()
            if not batch:
                self._wake.clear()
                continue
            try:
                await self._start_batch(batch)
            except TRANSIENT as exc:
                for ref, new in batch:  # again, unless deleted or changed meanwhile
                    current = self.runs.get(ref.run_id)
                    if current is not None and current.uid == ref.uid \
                            and self.needs_start(current):
                        self._queue.setdefault(ref.run_id, (current, new))
                self.metrics.api_errors.labels("start").inc()
                await asyncio.sleep(self._outage.failed(exc))
                self._wake.set()
            else:
                self._outage.succeeded()
            finally:
                self._in_flight.difference_update(ref.run_id for ref, _ in batch)

    async def _start_batch(self, batch: list[tuple[RunRef, NewRun]]) -> None:
        news = [new for _ref, new in batch]
        ids = [new.run_id for new in news]
        self.sync.expect(ids)
        try:
            results = await self.store.create_runs(news)
        except TRANSIENT:
            self.sync.expected(ids)
            raise
        except Exception as exc:
            self.sync.expected(ids)
            if len(batch) == 1:
                self._reject(batch[0][0], f"the store refused the run: {exc}")
                return
            for one in batch:  # find the one the store refuses; start the others
                await self._start_batch([one])
            return
        now = time.time()
        unmoved = self.sync.expected(ids)
        self.batches += 1
        created = 0
        for (ref, new), (made, workflow) in zip(batch, results, strict=True):
            if workflow != new.workflow:
                self._reject(ref, f"run id '{new.run_id}' already belongs to workflow "
                                  f"'{workflow}', not '{new.workflow}'; choose another "
                                  f"spec.runId")
                continue
            self.started.add(new.run_id)
            if made:
                created += 1
                known = pending_run(new, now) if new.run_id in unmoved else None
                self.sync.mark(new.run_id, known=known)
            else:
                self.sync.mark(new.run_id)
        if created:
            self.metrics.runs_started.inc(created)
            self._on_started()
        if len(batch) == 1 and created:
            ref, new = batch[0]
            log.info("started run %s of workflow %s for WorkflowRun %s/%s", new.run_id,
                     new.workflow, ref.namespace, ref.name)
        elif created:
            log.info("started %d runs for WorkflowRuns (%d adopted)", created,
                     len(batch) - created)

    # -- deleting -----------------------------------------------------------------------
    async def finalize(self, ref: RunRef) -> None:
        """A resource being deleted: cancel its run, then remove the finalizer (an outage
        is retried by the sweep)."""
        if ref.uid in self.finalizing:
            return
        self.finalizing.add(ref.uid)
        try:
            await self.cancel(ref)
            self.cancelled.add(ref.uid)
            await remove_finalizer(self.kube, ref.namespace, ref.name, ref.finalizers)
        except TRANSIENT as exc:
            log.warning("WorkflowRun %s/%s: run not cancelled or finalizer not removed yet "
                        "(retried by the sweep): %s", ref.namespace, ref.name, exc)
        finally:
            self.finalizing.discard(ref.uid)

    async def cancel(self, ref: RunRef) -> None:
        """Cancel the run of the deleted resource ``ref``."""
        try:
            run = await self.store.cancel_run(
                ref.run_id, f"WorkflowRun {ref.namespace}/{ref.name} was deleted")
        except RunNotFound:
            return
        if run.status is RunStatus.CANCELLED and ref.phase != "Cancelled":
            self.metrics.runs_cancelled.labels("deleted").inc()
            log.info("cancelled run %s: WorkflowRun %s/%s deleted", ref.run_id, ref.namespace,
                     ref.name)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(self._logged(work))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _logged(work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except TRANSIENT as exc:
            log.warning("WorkflowRun: %s (retried by the sweep)", exc)


def new_run(ref: RunRef, body: Mapping[str, Any]) -> NewRun:
    """The ``NewRun`` of a resource (``Rejected`` if its spec or input cannot be stored)."""
    try:
        spec = spec_of(body)
    except ValidationError as exc:
        raise Rejected("invalid spec: " + "; ".join(str(e["msg"]) for e in exc.errors())
                       ) from exc
    try:
        args, kwargs = input_from_json(spec.input)
        new = NewRun(run_id=ref.run_id, namespace=ref.namespace, workflow=spec.workflow,
                     input=encode_input(args, kwargs), pool=spec.pool,
                     upgrade=spec.upgrade or "pinned",
                     labels={CR_UID_LABEL: ref.uid, CR_NAME_LABEL: ref.name[:63]})
        return validate_new_run(new)
    except (KenningError, TypeError, ValueError) as exc:
        raise Rejected(f"invalid spec: {exc}") from exc


def pending_run(new: NewRun, now: float) -> Run:
    """The run ``new`` is once created: pending, nothing done yet."""
    return Run(run_id=new.run_id, namespace=new.namespace, workflow=new.workflow,
               input=new.input, status=RunStatus.PENDING, created_at=now, pool=new.pool,
               labels=dict(new.labels), build_id=new.build_id, upgrade=new.upgrade)
