"""Kubernetes Events about ``WorkflowRun``s: one per transition while the operator is idle,
aggregated under load.

Events cost the API server (and etcd) as much as a status patch. Within ``rate`` Events a
second (a token bucket with a burst of the same size) each transition is posted on its own,
about its resource. Beyond it, transitions are counted per (namespace, type, reason) and, once
a ``window``, posted as one Event about the namespace with ``count`` set to the number of runs
and a few of their names: ``kubectl get events`` still tells what happened, at a cost that
does not grow with the backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from kenning_operator.directory import RunRef
from kenning_operator.kube import KubeClient, resource_path
from kenning_operator.metrics import Metrics
from kenning_operator.outage import TRANSIENT
from kenning_operator.resources import API_VERSION
from kenning_operator.status import timestamp

log = logging.getLogger(__name__)

SAMPLE_NAMES = 5


@dataclass
class _Aggregate:
    count: int = 0
    first: float = 0.0
    names: list[str] = field(default_factory=list)


class EventPoster:
    """Posts Events, each on its own within the budget, aggregated beyond it."""

    def __init__(self, kube: KubeClient, metrics: Metrics, *, rate: float = 20.0,
                 window: float = 1.0) -> None:
        self.kube = kube
        self.metrics = metrics
        self.rate = rate
        self.window = window
        self._tokens = rate
        self._filled_at = time.monotonic()
        self._pending: dict[tuple[str, str, str], _Aggregate] = {}
        self._flusher: asyncio.Task[None] | None = None
        self.posted = 0
        """Events posted so far (an aggregated one counts once)."""
        self.aggregated = 0
        """Transitions folded into aggregated Events so far."""

    def _take_token(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.rate, self._tokens + (now - self._filled_at) * self.rate)
        self._filled_at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    async def transition(self, ref: RunRef, kind: str, reason: str, message: str) -> None:
        """A run's transition: an Event of its own, or a share of an aggregated one."""
        if self._take_token():
            await self.post(ref, kind, reason, message)
            return
        agg = self._pending.setdefault((ref.namespace, kind, reason),
                                       _Aggregate(first=time.time()))
        agg.count += 1
        if len(agg.names) < SAMPLE_NAMES:
            agg.names.append(ref.name)
        self.aggregated += 1
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_later(),
                                                name="kenning-op-events")

    async def post(self, ref: RunRef, kind: str, reason: str, message: str) -> None:
        """Post one Event about one ``WorkflowRun`` (failures are only logged)."""
        await self._create(ref.namespace, {
            "apiVersion": API_VERSION, "kind": "WorkflowRun", "name": ref.name,
            "namespace": ref.namespace, "uid": ref.uid}, ref.name, kind, reason, message, 1,
            time.time())

    async def close(self) -> None:
        """Post what is aggregated, then stop."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self._flush()

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.window)
        await self._flush()

    async def _flush(self) -> None:
        pending, self._pending = self._pending, {}
        for (namespace, kind, reason), agg in pending.items():
            names = ", ".join(agg.names) + (", ..." if agg.count > len(agg.names) else "")
            message = (f"{agg.count} WorkflowRuns: {reason} (Events aggregated while the "
                       f"operator is busy): {names}")
            await self._create(namespace, {"apiVersion": "v1", "kind": "Namespace",
                                           "name": namespace}, f"workflowruns-{namespace}",
                               kind, reason, message, agg.count, agg.first)

    async def _create(self, namespace: str, involved: dict[str, Any], prefix: str, kind: str,
                      reason: str, message: str, count: int, first: float) -> None:
        now = timestamp(time.time())
        body: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{prefix}.{uuid.uuid4().hex[:12]}", "namespace": namespace},
            "involvedObject": involved,
            "type": kind, "reason": reason, "message": message[:1024],
            "source": {"component": "kenning-operator"},
            "reportingComponent": "kenning.dev/operator", "reportingInstance": "kenning-operator",
            "firstTimestamp": timestamp(first), "lastTimestamp": now, "count": count,
        }
        try:
            await self.kube.create(resource_path("v1", "events", namespace), body)
        except TRANSIENT as exc:
            self.metrics.api_errors.labels("event").inc()
            log.warning("event %s in namespace %s not posted: %s", reason, namespace, exc)
            return
        self.posted += 1
        self.metrics.events_posted.inc()
