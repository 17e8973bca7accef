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
from collections.abc import Callable
from typing import Any

from kenning.core import codec
from kenning.core.errors import RunNotFound
from kenning.core.models import Notification, NotificationKind, Run, RunStatus
from kenning.core.store import Store
from kenning_operator.config import OperatorConfig
from kenning_operator.directory import PoolDirectory, RunDirectory, RunRef
from kenning_operator.events import EventPoster
from kenning_operator.finalizer import add_finalizer
from kenning_operator.kube import KubeClient, KubeError, resource_path
from kenning_operator.metrics import Metrics
from kenning_operator.outage import TRANSIENT, LoopSupervisor, Outage
from kenning_operator.resources import (
    API_VERSION,
    CR_UID_LABEL,
    FINISHED_PHASES,
    PARENT_LABEL,
    RUN_ID_LABEL,
)
from kenning_operator.status import (
    Schedulable,
    label_safe,
    mirror_name,
    status_digest,
    status_of,
    transition_event,
)

log = logging.getLogger(__name__)

SWEEP_PAGE = 5_000
SWEEP_SHARE = 25
"""The next sweep waits at least this many times as long as the last one took."""
MIRROR_RETRY = 60.0
PARENT_WAIT = 10.0
"""Seconds a child run's resource waits for its parent's to be seen (a child is started in
the commit after its parent started, so the parent's resource is usually there already)."""
PARENT_RETRY = 0.25


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
        self.events = EventPoster(kube, metrics, rate=config.event_rate)
        self._on_runnable = on_runnable
        self._on_sweep = on_sweep
        self._dirty: dict[str, float] = {}
        """Runs to bring up to date, with when they were first marked (queued, or marked
        again while in flight)."""
        self._known: dict[str, Run] = {}
        """Runs as the operator just created them (their first status needs no read)."""
        self._expecting: set[str] = set()
        self._moved: set[str] = set()
        """Of the runs being created, those a notification said moved on meanwhile."""
        self.synced = asyncio.Event()
        """Set once the directory holds every resource (the informers listed them): the
        workers and the sweep wait for it, so that no run looks as if it had none."""
        self._compare_all = True
        """The next sweep compares every unfinished run's whole status with its resource's
        (after a (re)start), not only its phase."""
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._in_flight: set[str] = set()
        self._next_slot = 0.0
        self._sweep_now = asyncio.Event()
        self._patched: dict[str, str] = {}
        self._patched_phase: dict[str, str] = {}
        self._posted: dict[str, str] = {}
        self._finalizing: set[str] = set()
        self._ttl: list[tuple[float, str, str, str]] = []
        self._ttl_uids: set[str] = set()
        self._deadlines: dict[str, float] = {}
        self._mirror_retry: dict[str, float] = {}
        self._parent_wait: dict[str, float] = {}
        """Children whose parent's resource is not known yet, since when."""
        self.parent_wait = PARENT_WAIT
        """Seconds a child's resource waits for its parent's before it is created unowned."""
        self._tasks: list[asyncio.Task[None]] = []
        self._sync_outage = Outage("WorkflowRun status sync")
        self._sweep_outage = Outage("WorkflowRun catch-up sweep")
        self.supervisor: LoopSupervisor | None = None
        """Told when a loop dies of a bug (set by the operator)."""
        self.patches = 0
        """Status patches made so far."""
        self._unsubscribe: Callable[[], None] | None = None

    # -- lifecycle ----------------------------------------------------------------------
    async def start(self) -> None:
        """Listen to the store and start the patch workers and the sweep."""
        self._unsubscribe = self.store.subscribe(self._on_note)
        self._tasks = [asyncio.create_task(self._worker(), name=f"kenning-op-sync-{i}")
                       for i in range(self.config.patch_concurrency)]
        self._tasks.append(asyncio.create_task(self._sweep_loop(), name="kenning-op-sweep"))
        if self.supervisor is not None:
            for task in self._tasks:
                self.supervisor.watch(task)

    async def stop(self) -> None:
        """Stop listening; pending changes are caught up by the next operator's sweep."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for task in self._tasks:
            task.cancel()
        # a loop that died of a bug was reported by the supervisor: not raised again
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        with contextlib.suppress(*TRANSIENT):
            await self.events.close()

    # -- inputs -------------------------------------------------------------------------
    def mark(self, run_id: str, *, known: Run | None = None) -> None:
        """Re-read this run soon and bring its resource up to date (``known``: the run as
        the operator itself just created it, so that it need not be read)."""
        if known is not None:
            self._known[run_id] = known
        if run_id in self._dirty:
            return  # queued already, or re-queued when its patch in flight ends
        self._dirty[run_id] = time.monotonic()
        if run_id not in self._in_flight:
            self._queue.put_nowait(run_id)

    def expect(self, run_ids: list[str]) -> None:
        """These runs are being created: note which move on before the creation returns."""
        self._expecting.update(run_ids)

    def expected(self, run_ids: list[str]) -> set[str]:
        """The creation of ``run_ids`` returned: those no notification said moved on (their
        state is the one created)."""
        unmoved = {r for r in run_ids if r not in self._moved}
        self._expecting.difference_update(run_ids)
        self._moved.difference_update(run_ids)
        return unmoved

    def relisted(self) -> None:
        """The resources were listed again: the next sweep compares whole statuses."""
        self._compare_all = True
        self._sweep_now.set()

    def mark_pending(self, namespace: str) -> None:
        """Re-check the pending runs of a namespace (a pool appeared or changed)."""
        for ref in self.runs:
            if ref.namespace == namespace and ref.phase in (None, "Pending"):
                self.mark(ref.run_id)

    @property
    def backlog(self) -> int:
        """Runs waiting for their resource to be brought up to date."""
        return len(self._dirty)

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
        self._patched_phase.pop(ref.run_id, None)
        self._known.pop(ref.run_id, None)
        self._parent_wait.pop(ref.run_id, None)
        self._posted.pop(ref.run_id, None)
        self._deadlines.pop(ref.run_id, None)
        self._finalizing.discard(ref.uid)
        self._ttl_uids.discard(ref.uid)

    def _on_note(self, note: Notification) -> None:
        if note.run_id is None:
            return
        if note.kind is not NotificationKind.RUNNABLE:
            self._known.pop(note.run_id, None)
            if note.run_id in self._expecting:
                self._moved.add(note.run_id)
        self.mark(note.run_id)
        if note.kind in (NotificationKind.RUNNABLE, NotificationKind.FINISHED,
                         NotificationKind.CANCELLED, NotificationKind.TIMER):
            self._on_runnable()

    # -- patching -----------------------------------------------------------------------
    async def _worker(self) -> None:
        """One of ``patch_concurrency`` workers: never two on the same run at once."""
        await self.synced.wait()
        while True:
            run_id = await self._queue.get()
            since = self._dirty.pop(run_id, None)
            if since is None:
                continue
            self._in_flight.add(run_id)
            try:
                await self._sync_guarded(run_id, since)
            finally:
                self._in_flight.discard(run_id)
                if run_id in self._dirty:
                    self._queue.put_nowait(run_id)

    async def _sync_guarded(self, run_id: str, since: float) -> None:
        try:
            await self.sync_one(run_id)
        except TRANSIENT as exc:
            self.metrics.api_errors.labels("status").inc()
            if isinstance(exc, KubeError) and exc.status not in (429, 500, 503, 504):
                log.warning("status of run %s not updated (retried by the sweep): %s",
                            run_id, exc)
                return
            delay = self._sync_outage.failed(exc)
            asyncio.get_running_loop().call_later(delay, self.mark, run_id)
        else:
            self._sync_outage.succeeded()
            self.metrics.sync_lag.observe(time.monotonic() - since)

    async def _pace(self) -> None:
        """Wait for this write's slot: at most ``status_patch_rate`` writes a second."""
        now = time.monotonic()
        slot = max(now, self._next_slot)
        self._next_slot = slot + 1.0 / self.config.status_patch_rate
        if slot > now:
            await asyncio.sleep(slot - now)

    def desired(self, ref: RunRef, run: Run) -> tuple[dict[str, Any], str, Schedulable | None]:
        """The status ``ref`` should show for ``run``, its digest, and (while pending)
        whether a pool serves it."""
        schedulable = (self.pools.schedulable(ref.namespace, run.workflow, ref.pool)
                       if run.status is RunStatus.PENDING else None)
        status = status_of(run, generation=ref.generation, schedulable=schedulable,
                           previous_conditions=ref.conditions,
                           max_result_bytes=self.config.max_result_bytes, now=time.time())
        return status, status_digest(status), schedulable

    async def sync_one(self, run_id: str) -> None:
        """Bring the resource of ``run_id`` up to date (or create one for a run that has
        none). Patches only when the status would change what the resource shows."""
        for attempt in range(2):
            run = self._known.pop(run_id, None) if attempt == 0 else None
            known = run is not None
            if run is None:
                run = await self.store.get_run(run_id)
            if run is None:
                return
            ref = self.runs.get(run_id)
            if ref is None:
                await self._mirror(run)
                return
            if ref.deleting:
                return
            status, digest, schedulable = self.desired(ref, run)
            if digest in (ref.status_digest, self._patched.get(run_id)):
                break
            waited = time.monotonic()
            await self._pace()
            if attempt == 0 and (run_id in self._dirty or (
                    not known and time.monotonic() - waited > 0.005)):
                # Behind, and it changed meanwhile (or may have: it was read before the
                # wait): read it again, so that what changed joins this patch.
                self._dirty.pop(run_id, None)
                continue
            await self._patch(ref, run, status, digest, schedulable)
            break
        else:
            return
        if run.status.finished:
            self._deadlines.pop(run_id, None)
            self._schedule_ttl(ref, run)

    async def _patch(self, ref: RunRef, run: Run, status: dict[str, Any], digest: str,
                     schedulable: Schedulable | None) -> None:
        path = resource_path(API_VERSION, "workflowruns", ref.namespace, ref.name, "status")
        writes: list[Any] = [self.kube.merge_patch(path, {"status": status}, answer=False)]
        finalize = not ref.finalized and not run.status.finished \
            and ref.uid not in self._finalizing
        if finalize:
            self._finalizing.add(ref.uid)
            writes.append(add_finalizer(self.kube, ref.namespace, ref.name, ref.finalizers))
        results = await asyncio.gather(*writes, return_exceptions=True)
        if finalize and results[1] is not True:
            self._finalizing.discard(ref.uid)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        if results[0] is None:
            return  # the resource is gone
        self.metrics.status_patches.inc()
        self.patches += 1
        self._patched[run.run_id] = digest
        self._patched_phase[run.run_id] = run.status.phase
        await self._post_transition(ref, run, schedulable is not None and not schedulable.ok)

    async def _post_transition(self, ref: RunRef, run: Run, unschedulable: bool) -> None:
        phase = run.status.phase
        if unschedulable:
            phase = "NoPoolServesWorkflow"
        if self._posted.get(run.run_id, ref.phase or "Pending") == phase:
            return  # no transition (a new resource is Pending: that is no news)
        self._posted[run.run_id] = phase
        kind, reason, message = transition_event(run.status.phase, run)
        if unschedulable:
            kind, reason = "Warning", "NoPoolServesWorkflow"
            message = self.pools.schedulable(ref.namespace, run.workflow, ref.pool).message
        await self.events.transition(ref, kind, reason, message)

    async def post_event(self, ref: RunRef, kind: str, reason: str, message: str) -> None:
        """Post a Kubernetes Event about a ``WorkflowRun`` (failures are only logged)."""
        await self.events.post(ref, kind, reason, message)

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
        metadata: dict[str, Any] = {"name": mirror_name(run.run_id), "namespace": run.namespace,
                                    "labels": labels}
        if run.parent_run_id is not None:
            if label_safe(run.parent_run_id):
                labels[PARENT_LABEL] = run.parent_run_id
            owner = self._owner_of(run)
            if owner is None:
                return  # marked again shortly: the parent's resource is on its way
            if owner:
                metadata["ownerReferences"] = [owner]
        self._parent_wait.pop(run.run_id, None)
        body: dict[str, Any] = {
            "apiVersion": API_VERSION, "kind": "WorkflowRun", "metadata": metadata,
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
        log.info("created WorkflowRun %s/%s for run %s started outside Kubernetes%s",
                 run.namespace, body["metadata"]["name"], run.run_id,
                 f" (a child of {run.parent_run_id})" if run.parent_run_id else "")

    def _owner_of(self, child: Run) -> dict[str, Any] | None:
        """The ownerReference of a child run's resource: its parent's ``WorkflowRun``
        (controller false, blockOwnerDeletion true, so that deleting the parent deletes it);
        ``{}`` for none (the parent has no resource in the child's namespace), ``None``
        while the parent's resource may still come (the child is marked again)."""
        assert child.parent_run_id is not None
        parent = self.runs.get(child.parent_run_id)
        if parent is not None:
            if parent.namespace != child.namespace or not parent.uid:
                return {}  # owners are in the same namespace only
            return {"apiVersion": API_VERSION, "kind": "WorkflowRun", "name": parent.name,
                    "uid": parent.uid, "controller": False, "blockOwnerDeletion": True}
        now = time.monotonic()
        since = self._parent_wait.setdefault(child.run_id, now)
        if now - since < self.parent_wait:
            asyncio.get_running_loop().call_later(PARENT_RETRY, self.mark, child.run_id)
            return None
        return {}

    # -- the sweep ----------------------------------------------------------------------
    async def _sweep_loop(self) -> None:
        await self.synced.wait()
        next_catch_up = 0.0
        while True:
            if self._compare_all or time.monotonic() >= next_catch_up:
                began = time.monotonic()
                if not await self._sweep_outage.attempt(self.catch_up):
                    continue  # waited its backoff
                took = time.monotonic() - began
                # At 100,000 unfinished runs a sweep reads them all: it keeps to a small
                # share of the operator's time (notifications come first).
                next_catch_up = time.monotonic() + max(self.config.sweep_interval,
                                                       SWEEP_SHARE * took)
            if not await self._sweep_outage.attempt(self._due_work):
                continue
            wait = max(0.0, min(next_catch_up - time.monotonic(), self._next_due() - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._sweep_now.wait(), wait)
            self._sweep_now.clear()

    async def _due_work(self) -> None:
        now = time.time()
        await self._expire_ttls(now)
        await self._enforce_timeouts(now)

    def _next_due(self) -> float:
        dues = [self._ttl[0][0]] if self._ttl else []
        dues.extend(self._deadlines.values())
        return min(dues, default=float("inf"))

    async def catch_up(self) -> None:
        """Mark every run whose resource shows another phase than the store: all unfinished
        runs, paged from the oldest by an index. The first sweep after the resources were
        listed compares whole statuses (a restart writes only where one differs)."""
        self._on_sweep()
        compare_all, self._compare_all = self._compare_all, False
        unfinished: set[str] = set()
        after: tuple[float, str] | None = None
        while True:
            page = await self.store.list_unfinished_runs(after=after, limit=SWEEP_PAGE)
            for run in page:
                unfinished.add(run.run_id)
                ref = self.runs.get(run.run_id)
                if ref is None:
                    self.mark(run.run_id)
                elif compare_all:
                    if not ref.deleting and self.desired(ref, run)[1] not in (
                            ref.status_digest, self._patched.get(run.run_id)):
                        self.mark(run.run_id)
                # A phase patched but not seen back on the watch yet needs nothing.
                elif ref.phase != run.status.phase \
                        and self._patched_phase.get(run.run_id) != run.status.phase:
                    self.mark(run.run_id)
            if len(page) < SWEEP_PAGE:
                break
            after = (page[-1].created_at, page[-1].run_id)
        for ref in self.runs:
            finished = ref.phase in FINISHED_PHASES
            lost = ref.run_id not in unfinished and not finished \
                and self._patched_phase.get(ref.run_id) not in FINISHED_PHASES
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
