"""Pool sizing: each ``WorkerPool``'s Deployment follows its runnable and running runs.

A pool scales up at once (from zero when a run becomes runnable) and down only after it
was larger than needed for ``spec.idleSeconds``. One loop sizes every pool; store
notifications wake it early, a slow tick catches the rest (timers coming due).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kenning.core.store import Store
from kenning_operator.config import OperatorConfig
from kenning_operator.deployment import deployment_name, worker_deployment
from kenning_operator.directory import PoolDirectory, PoolRef
from kenning_operator.kube import KubeClient, KubeError, resource_path
from kenning_operator.metrics import Metrics
from kenning_operator.outage import LoopSupervisor, Outage
from kenning_operator.resources import API_VERSION, WorkerPoolSpec
from kenning_operator.status import timestamp
from kenning_operator.versions import PoolVersions

log = logging.getLogger(__name__)

TIMER_LEAD = 1.0
"""Seconds before a timer is due that its pool is woken."""
MIN_PASS_GAP = 0.25
"""Seconds between two passes of the scaler at least: under a backlog every store
notification wakes it, and each pass reads the grouped counts; the first wake after a quiet
spell is served at once (a pool scales from zero without delay)."""
ACTIVITY_STATUS_INTERVAL = 5.0
"""Seconds between pool status patches that only update ``activeRuns``/``lastActiveTime``
(replica changes are patched at once): no patch of the pool for every run."""


@dataclass
class _PoolState:
    replicas: int | None = None
    above_need_since: float | None = None
    last_active: float | None = None
    status: dict[str, Any] = field(default_factory=dict)
    status_patched_at: float = 0.0


def wanted_replicas(active: int, spec: WorkerPoolSpec) -> int:
    """Workers for ``active`` runs, within the pool's bounds."""
    need = math.ceil(active / spec.runs_per_worker)
    return max(spec.min_replicas, min(spec.max_replicas, need))


class PoolScaler:
    """Sizes the Deployments of all pools from the store's runs."""

    def __init__(self, config: OperatorConfig, store: Store, kube: KubeClient,
                 pools: PoolDirectory, metrics: Metrics, interval: float = 2.0) -> None:
        self.config = config
        self.store = store
        self.kube = kube
        self.pools = pools
        self.metrics = metrics
        self.interval = interval
        self._wake = asyncio.Event()
        self._state: dict[tuple[str, str], _PoolState] = {}
        self._task: asyncio.Task[None] | None = None
        self._outage = Outage("pool scaler")
        self.supervisor: LoopSupervisor | None = None
        """Told when the loop dies of a bug (set by the operator)."""
        self.versions = PoolVersions(store, kube, pools)
        self.passes = 0
        """Passes sizing every pool so far."""

    async def start(self) -> None:
        """Start the sizing loop."""
        self._task = asyncio.create_task(self._loop(), name="kenning-op-scaler")
        if self.supervisor is not None:
            self.supervisor.watch(self._task)

    async def stop(self) -> None:
        """Stop the loop (Deployments keep their size)."""
        if self._task is not None:
            self._task.cancel()
            # a loop that died of a bug was reported by the supervisor: not raised again
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    def wake(self) -> None:
        """Size the pools now (a run became runnable or finished)."""
        self._wake.set()

    def forget(self, namespace: str, name: str) -> None:
        """A pool was deleted."""
        self._state.pop((namespace, name), None)
        self.versions.forget(namespace, name)

    async def ensure_deployment(self, pool: PoolRef) -> None:
        """Create the pool's Deployment, or bring its pod template up to date."""
        if pool.spec is None:
            return
        state = self._state.setdefault((pool.namespace, pool.name), _PoolState())
        path = resource_path("apps/v1", "deployments", pool.namespace)
        name = deployment_name(pool.name)
        existing = await self.kube.get(f"{path}/{name}")
        replicas = (existing or {}).get("spec", {}).get("replicas")
        if existing is not None:
            await self.versions.retire(pool, existing)  # before the template moves on
        body = worker_deployment(namespace=pool.namespace, pool=pool.name, uid=pool.uid,
                                 spec=pool.spec, config=self.config,
                                 replicas=replicas if replicas is not None
                                 else pool.spec.min_replicas)
        if existing is None:
            await self.kube.create(path, body)
            log.info("created Deployment %s/%s for WorkerPool %s", pool.namespace, name,
                     pool.name)
        else:
            await self.kube.merge_patch(f"{path}/{name}", {
                "metadata": {"labels": body["metadata"]["labels"],
                             "ownerReferences": body["metadata"]["ownerReferences"]},
                "spec": {"template": body["spec"]["template"]}})
        state.replicas = body["spec"]["replicas"]
        self.wake()

    async def _loop(self) -> None:
        while True:
            began = time.monotonic()
            if not await self._outage.attempt(self.size_all):
                self.metrics.api_errors.labels("scale").inc()
                continue  # waited its backoff
            self.passes += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            rest = began + min(MIN_PASS_GAP, self.interval) - time.monotonic()
            if rest > 0:
                await asyncio.sleep(rest)
            self._wake.clear()

    async def active_runs(self) -> Counter[tuple[str, str]]:
        """Runnable and running runs per (namespace, pool), and suspended ones about to
        wake: grouped counts from the store, mapped to the pools that serve them."""
        counts: Counter[tuple[str, str]] = Counter()
        for group in await self.store.count_active_runs(wake_before=time.time() + TIMER_LEAD):
            pool = self.pools.pool_for(group.namespace, group.workflow, group.pool)
            if pool is not None:
                counts[(pool.namespace, pool.name)] += group.count
        return counts

    async def size_all(self) -> None:
        """Size every pool once."""
        counts = await self.active_runs()
        if self.versions.due():
            await self.versions.refresh()
        for pool in self.pools:
            if pool.spec is not None:
                active = counts[(pool.namespace, pool.name)]
                active = max(0, active - self.versions.held_by_old_versions(pool))
                await self._size(pool, pool.spec, active)
                await self.versions.reconcile(pool, deployment_name(pool.name),
                                              self._state[(pool.namespace, pool.name)].replicas)

    async def _size(self, pool: PoolRef, spec: WorkerPoolSpec, active: int) -> None:
        key = (pool.namespace, pool.name)
        state = self._state.setdefault(key, _PoolState())
        now = time.time()
        if active:
            state.last_active = now
        path = resource_path("apps/v1", "deployments", pool.namespace,
                             deployment_name(pool.name))
        deployment = await self.kube.get(path)
        if deployment is None:
            return  # ensure_deployment (the pool's handler) creates it
        current = int(deployment.get("spec", {}).get("replicas") or 0)
        want = wanted_replicas(active, spec)
        target = current
        if want > current:
            target, state.above_need_since = want, None
        elif want < current:
            state.above_need_since = state.above_need_since or now
            if now - state.above_need_since >= spec.idle_seconds:
                target, state.above_need_since = want, None
        else:
            state.above_need_since = None
        if target != current:
            await self.kube.merge_patch(path, {"spec": {"replicas": target}})
            log.info("WorkerPool %s/%s: %d active runs, %d -> %d workers", pool.namespace,
                     pool.name, active, current, target)
        state.replicas = target
        self.metrics.pool_replicas.labels(pool.namespace, pool.name).set(target)
        dstatus = deployment.get("status") or {}
        status = {"deployment": deployment_name(pool.name), "desiredReplicas": target,
                  "replicas": int(dstatus.get("replicas") or 0),
                  "readyReplicas": int(dstatus.get("readyReplicas") or 0),
                  "activeRuns": active, "lastActiveTime": timestamp(state.last_active),
                  "observedGeneration": pool.generation}
        activity = ("activeRuns", "lastActiveTime")
        only_activity = bool(state.status) and all(
            status[k] == state.status.get(k) for k in status if k not in activity)
        if status != state.status and not (
                only_activity and now - state.status_patched_at < ACTIVITY_STATUS_INTERVAL):
            try:
                await self.kube.merge_patch(
                    resource_path(API_VERSION, "workerpools", pool.namespace, pool.name,
                                  "status"), {"status": status})
                state.status, state.status_patched_at = status, now
            except KubeError as exc:
                log.warning("status of WorkerPool %s/%s not updated: %s", pool.namespace,
                            pool.name, exc)
