"""Store -> Kubernetes: run status into ``WorkflowRun`` status, Events, mirrors, TTL, timeouts.

Store notifications mark runs dirty; a flusher re-reads each dirty run and patches its
resource's status only when its fingerprint (phase, wait, generation) changed. An idle
operator patches at once; a busy one paces its batches to ``status_patch_rate`` and gathers
what changes in between, so the intermediate phases of busy runs coalesce. One slow sweep
catches up with what no notification said (a change made by another process on SQLite),
expires finished resources after their TTL and
cancels runs past ``spec.timeout``: one loop for all resources, no timer per object.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from kenning.core import codec
from kenning.core.errors import RunNotFound
from kenning.core.models import Notification, NotificationKind, Run, RunStatus
from kenning.core.store import Store
from kenning_operator.config import OperatorConfig
from kenning_operator.directory import PoolDirectory, RunDirectory, RunRef
from kenning_operator.kube import KubeClient, KubeError, resource_path
from kenning_operator.metrics import Metrics
from kenning_operator.resources import (
    API_VERSION,
    CR_UID_LABEL,
    FINISHED_PHASES,
    RUN_ID_LABEL,
)
from kenning_operator.status import (
    fingerprint,
    label_safe,
    mirror_name,
    status_of,
    timestamp,
    transition_event,
)

log = logging.getLogger(__name__)

_UNFINISHED = (RunStatus.PENDING, RunStatus.RUNNING, RunStatus.WAITING_FOR_EVENT,
               RunStatus.WAITING_FOR_TIMER)
SWEEP_LIMIT = 50_000
MIRROR_RETRY = 60.0


class RunSync:
    """Keeps every ``WorkflowRun`` in step with its run."""

    def __init__(self, config: OperatorConfig, store: Store, kube: KubeClient,
                 runs: RunDirectory, pools: PoolDirectory, metrics: Metrics,
                 on_runnable: Callable[[], None] = lambda: None,
                 on_sweep: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.store = store
        self.kube = kube
        self.runs = runs
        self.pools = pools
        self.metrics = metrics
        self._on_runnable = on_runnable
        self._on_sweep = on_sweep
        self._dirty: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._sweep_now = asyncio.Event()
        self._patched: dict[str, str] = {}
        self._posted: dict[str, str] = {}
        self._ttl: list[tuple[float, str, str, str]] = []
        self._ttl_uids: set[str] = set()
        self._deadlines: dict[str, float] = {}
        self._mirror_retry: dict[str, float] = {}
        self._semaphore = asyncio.Semaphore(config.patch_concurrency)
        self._tasks: list[asyncio.Task[None]] = []
        self.patches = 0
        """Status patches made so far."""
        self._unsubscribe: Callable[[], None] | None = None

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Listen to the store and start the flusher and the sweep."""
        self._unsubscribe = self.store.subscribe(self._on_note)
        self._tasks = [asyncio.create_task(self._flush_loop(), name="kenning-op-flush"),
                       asyncio.create_task(self._sweep_loop(), name="kenning-op-sweep")]

    async def stop(self) -> None:
        """Stop listening; pending changes are caught up by the next operator's sweep."""
        if self._unsubscribe is not None:
            self._unsubscribe()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # -- inputs -------------------------------------------------------------------------
    def mark(self, run_id: str) -> None:
        """Re-read this run soon and bring its resource up to date."""
        self._dirty.setdefault(run_id, time.monotonic())
        self._wake.set()

    def mark_pending(self, namespace: str) -> None:
        """Re-check the pending runs of a namespace (a pool appeared or changed)."""
        for ref in self.runs:
            if ref.namespace == namespace and ref.phase in (None, "Pending"):
                self.mark(ref.run_id)

    def resource_seen(self, ref: RunRef) -> None:
        """A resource was added or changed: note its timeout."""
        if ref.timeout_seconds is not None and ref.created_at is not None \
                and ref.phase not in FINISHED_PHASES:
            due = ref.created_at + ref.timeout_seconds
            if self._deadlines.get(ref.run_id) != due:
                self._deadlines[ref.run_id] = due
                self._sweep_now.set()
        else:
            self._deadlines.pop(ref.run_id, None)

    def resource_gone(self, ref: RunRef) -> None:
        """A resource was deleted: forget what was patched for it."""
        self._patched.pop(ref.run_id, None)
        self._posted.pop(ref.run_id, None)
        self._deadlines.pop(ref.run_id, None)
        self._ttl_uids.discard(ref.uid)

    def _on_note(self, note: Notification) -> None:
        if note.run_id is None:
            return
        self.mark(note.run_id)
        if note.kind in (NotificationKind.RUNNABLE, NotificationKind.FINISHED,
                         NotificationKind.CANCELLED, NotificationKind.TIMER):
            self._on_runnable()

    # -- flushing -----------------------------------------------------------------------
    async def _flush_loop(self) -> None:
        next_batch = 0.0
        while True:
            await self._wake.wait()
            pause = next_batch - time.monotonic()
            # Over the patch budget: wait, and what changes meanwhile joins this batch.
            # Otherwise only let the notes of this same moment join.
            await asyncio.sleep(max(0.0, pause))
            self._wake.clear()
            batch, self._dirty = self._dirty, {}
            began, patched = time.monotonic(), self.patches
            await asyncio.gather(*(self._sync_guarded(run_id, since)
                                   for run_id, since in batch.items()))
            next_batch = began + (self.patches - patched) / self.config.status_patch_rate

    async def _sync_guarded(self, run_id: str, since: float) -> None:
        async with self._semaphore:
            try:
                await self.sync_one(run_id)
            except Exception as exc:  # the sweep retries it
                self.metrics.api_errors.labels("status").inc()
                log.warning("status of run %s not updated (retried by the sweep): %s",
                            run_id, exc)
            else:
                self.metrics.sync_lag.observe(time.monotonic() - since)

    async def sync_one(self, run_id: str) -> None:
        """Bring the resource of ``run_id`` up to date (or create one for a run that has
        none)."""
        run = await self.store.get_run(run_id)
        if run is None:
            return
        ref = self.runs.get(run_id)
        if ref is None:
            await self._mirror(run)
            return
        if ref.deleting:
            return
        schedulable = (self.pools.schedulable(ref.namespace, run.workflow, ref.pool)
                       if run.status is RunStatus.PENDING else None)
        mark = fingerprint(run, ref.generation, schedulable)
        if self._patched.get(run_id) != mark:
            status = status_of(run, generation=ref.generation, schedulable=schedulable,
                               previous_conditions=ref.conditions,
                               max_result_bytes=self.config.max_result_bytes, now=time.time())
            path = resource_path(API_VERSION, "workflowruns", ref.namespace, ref.name, "status")
            if await self.kube.merge_patch(path, {"status": status}) is None:
                return  # the resource is gone
            self.metrics.status_patches.inc()
            self.patches += 1
            self._patched[run_id] = mark
            await self._post_transition(ref, run, schedulable is not None and
                                        not schedulable.ok)
        if run.status.finished:
            self._deadlines.pop(run_id, None)
            self._schedule_ttl(ref, run)

    async def _post_transition(self, ref: RunRef, run: Run, unschedulable: bool) -> None:
        phase = run.status.phase
        if self._posted.get(run.run_id, ref.phase) == phase:
            return
        self._posted[run.run_id] = phase
        kind, reason, message = transition_event(phase, run)
        if unschedulable:
            kind, reason = "Warning", "NoPoolServesWorkflow"
            message = self.pools.schedulable(ref.namespace, run.workflow, ref.pool).message
        await self.post_event(ref, kind, reason, message)

    async def post_event(self, ref: RunRef, kind: str, reason: str, message: str) -> None:
        """Post a Kubernetes Event about a ``WorkflowRun`` (failures are only logged)."""
        now = timestamp(time.time())
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{ref.name}.{uuid.uuid4().hex[:12]}",
                         "namespace": ref.namespace},
            "involvedObject": {"apiVersion": API_VERSION, "kind": "WorkflowRun",
                               "name": ref.name, "namespace": ref.namespace, "uid": ref.uid},
            "type": kind, "reason": reason, "message": message[:1024],
            "source": {"component": "kenning-operator"},
            "reportingComponent": "kenning.dev/operator", "reportingInstance": "kenning-operator",
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        try:
            await self.kube.create(resource_path("v1", "events", ref.namespace), body)
            self.metrics.events_posted.inc()
        except (TimeoutError, KubeError, OSError) as exc:
            self.metrics.api_errors.labels("event").inc()
            log.warning("event %s for %s/%s not posted: %s", reason, ref.namespace, ref.name,
                        exc)

    # -- runs started elsewhere ---------------------------------------------------------
    async def _mirror(self, run: Run) -> None:
        if not self.config.mirror_external_runs or run.status.finished \
                or CR_UID_LABEL in run.labels:
            return
        if self.config.namespaces and run.namespace not in self.config.namespaces:
            return
        if self._mirror_retry.get(run.run_id, 0.0) > time.monotonic():
            return
        labels = {RUN_ID_LABEL: run.run_id} if label_safe(run.run_id) else {}
        body: dict[str, Any] = {
            "apiVersion": API_VERSION, "kind": "WorkflowRun",
            "metadata": {"name": mirror_name(run.run_id), "namespace": run.namespace,
                         "labels": labels},
            "spec": {"workflow": run.workflow, "input": _user_input(run.input),
                     "runId": run.run_id, **({"pool": run.pool} if run.pool else {})},
        }
        path = resource_path(API_VERSION, "workflowruns", run.namespace)
        try:
            await self.kube.create(path, body)
        except KubeError as exc:
            if exc.status != 409:
                self._mirror_retry[run.run_id] = time.monotonic() + MIRROR_RETRY
                self.metrics.api_errors.labels("mirror").inc()
                log.warning("no WorkflowRun created for run %s (namespace %s): %s; retrying "
                            "in %.0fs", run.run_id, run.namespace, exc, MIRROR_RETRY)
            return
        self._mirror_retry.pop(run.run_id, None)
        self.metrics.mirrored.inc()
        log.info("created WorkflowRun %s/%s for run %s started outside Kubernetes",
                 run.namespace, body["metadata"]["name"], run.run_id)

    # -- the sweep ----------------------------------------------------------------------
    async def _sweep_loop(self) -> None:
        next_catch_up = 0.0
        while True:
            now = time.time()
            if time.monotonic() >= next_catch_up:
                next_catch_up = time.monotonic() + self.config.sweep_interval
                await self._guarded(self.catch_up())
            await self._guarded(self._expire_ttls(now))
            await self._guarded(self._enforce_timeouts(now))
            wait = max(0.0, min(next_catch_up - time.monotonic(), self._next_due() - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sweep_now.wait(), wait)
            self._sweep_now.clear()

    async def _guarded(self, work: Any) -> None:
        try:
            await work
        except Exception as exc:
            log.warning("sweep step failed (retried next sweep): %s", exc)

    def _next_due(self) -> float:
        dues = [self._ttl[0][0]] if self._ttl else []
        dues.extend(self._deadlines.values())
        return min(dues, default=float("inf"))

    async def catch_up(self) -> None:
        """Mark every run whose resource shows another phase than the store."""
        self._on_sweep()
        unfinished: dict[str, Run] = {}
        for status in _UNFINISHED:
            for run in await self.store.list_runs(status=status, limit=SWEEP_LIMIT):
                unfinished[run.run_id] = run
        for run in unfinished.values():
            ref = self.runs.get(run.run_id)
            if ref is None or ref.phase != run.status.phase:
                self.mark(run.run_id)
        for ref in self.runs:
            finished = ref.phase in FINISHED_PHASES
            lost = ref.run_id not in unfinished and not finished
            ttl_unknown = finished and ref.ttl_seconds is not None \
                and ref.uid not in self._ttl_uids
            if lost or ttl_unknown:
                self.mark(ref.run_id)
        self.metrics.resources.set(len(self.runs))

    def _schedule_ttl(self, ref: RunRef, run: Run) -> None:
        if ref.ttl_seconds is None or ref.uid in self._ttl_uids:
            return
        due = (run.finished_at or time.time()) + ref.ttl_seconds
        heapq.heappush(self._ttl, (due, ref.uid, ref.namespace, ref.name))
        self._ttl_uids.add(ref.uid)
        self._sweep_now.set()

    async def _expire_ttls(self, now: float) -> None:
        while self._ttl and self._ttl[0][0] <= now:
            _due, uid, namespace, name = heapq.heappop(self._ttl)
            if uid not in self._ttl_uids:
                continue  # the resource went away meanwhile
            path = resource_path(API_VERSION, "workflowruns", namespace, name)
            if await self.kube.delete(path, uid=uid):
                self.metrics.deleted_after_ttl.inc()
                log.info("deleted WorkflowRun %s/%s after its ttlSecondsAfterFinished",
                         namespace, name)

    async def _enforce_timeouts(self, now: float) -> None:
        for run_id, due in list(self._deadlines.items()):
            if due > now:
                continue
            del self._deadlines[run_id]
            ref = self.runs.get(run_id)
            timeout = ref.timeout_seconds if ref else None
            try:
                run = await self.store.cancel_run(
                    run_id, f"timed out: not finished {timeout:g}s after it was created "
                            f"(spec.timeout)")
            except RunNotFound:
                continue
            if run.status is RunStatus.CANCELLED:
                self.metrics.runs_cancelled.labels("timeout").inc()
                self.mark(run_id)


def _user_input(stored: str) -> Any:
    """The ``spec.input`` form of a stored input: keywords, positional, or both."""
    value = codec.loads(stored)
    if not isinstance(value, dict):
        return value
    args, kwargs = value.get("args") or [], value.get("kwargs") or {}
    if not args:
        return kwargs
    if not kwargs:
        return args
    return value
