"""Publishing events that workflows emitted: the outbox dispatcher and its publishers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Final

import aiohttp
from cloudevents.core.bindings.http import HTTPMessage, to_binary
from cloudevents.core.exceptions import CloudEventValidationError
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from kenning.core.errors import KenningError, StoreUnavailable
from kenning.core.models import CloudEventRecord, Notification, NotificationKind, OutboxEntry
from kenning.core.outage import Outage, jittered
from kenning.core.store import Store
from kenning.runtime.worker_metrics import WorkerMetrics

log = logging.getLogger(__name__)

Publisher = Callable[[str, CloudEventRecord], Awaitable[None]]

_JSON_FORMAT: Final = JSONFormat()


def local_publisher(store: Store) -> Publisher:
    """Deliver to this engine's own router (embedded default): one workflow wakes another."""
    async def publish(namespace: str, record: CloudEventRecord) -> None:
        await store.accept_events(namespace, [record])
    return publish


class PublishRejected(KenningError):
    """The target refused an event for good (a 4xx answer other than 408 and 429, or an event
    the HTTP binding cannot carry): retrying cannot help, the outbox entry is marked dead."""


def binary_message(record: CloudEventRecord) -> HTTPMessage:
    """The event in HTTP binary mode, headers encoded by the CloudEvents library's binding
    (every attribute percent-encoded as the specification says); header names lower-case."""
    attributes: dict[str, Any] = {
        "specversion": record.specversion, "id": record.id, "source": record.source,
        "type": record.type, "subject": record.subject, "dataschema": record.dataschema,
        "datacontenttype": record.datacontenttype or "application/json", **record.extensions,
    }
    if record.time is not None:
        attributes["time"] = datetime.fromisoformat(record.time)
    if record.data_base64 is not None:
        body = base64.b64decode(record.data_base64)
    else:
        body = (record.data or "").encode()
    try:
        event = CloudEvent({k: v for k, v in attributes.items() if v is not None})
    except CloudEventValidationError as exc:
        raise PublishRejected(f"event {record.id!r} cannot be sent over HTTP: {exc}") from None
    message = to_binary(event, _JSON_FORMAT)
    return HTTPMessage({name.lower(): value for name, value in message.headers.items()}, body)


def binary_headers(record: CloudEventRecord) -> dict[str, str]:
    """HTTP binary-mode headers of a CloudEvent (``content-type`` included)."""
    return binary_message(record).headers


def is_final(status: int) -> bool:
    """True for an HTTP answer that retrying cannot change: 4xx other than 408 and 429."""
    return 400 <= status < 500 and status not in (408, 429)


class HttpPublisher:
    """POSTs events in binary mode to a URL (``$K_SINK``, a Knative broker)."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, namespace: str, record: CloudEventRecord) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        message = binary_message(record)
        headers = dict(message.headers)
        if self._token:
            headers["authorization"] = f"Bearer {self._token}"
        async with self._session.post(self.url, data=message.body, headers=headers) as response:
            if response.status >= 300:
                text = " ".join((await response.text(errors="replace"))[:200].split())
                problem = f"{self.url} answered {response.status}: {text}"
                if is_final(response.status):
                    raise PublishRejected(problem)
                raise RuntimeError(problem)

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()


class OutboxDispatcher:
    """Publishes due outbox entries. A failure is retried with capped, jittered exponential
    backoff; an entry its target refuses for good (``PublishRejected``) is marked dead."""

    def __init__(self, store: Store, publisher: Publisher, *, poll_interval: float = 1.0,
                 max_backoff: float = 300.0, first_backoff: float = 0.5,
                 metrics: WorkerMetrics | None = None) -> None:
        self.store = store
        self.publisher = publisher
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self.first_backoff = first_backoff
        self.metrics = metrics
        self._wakeup = asyncio.Event()
        self._store_outage = Outage("outbox dispatcher reading the store", log)
        self._target_outage = Outage("outbox publishing events", log)

    async def run(self) -> None:
        """Publish until cancelled; store outages are ridden out, anything else raises."""
        unsubscribe = self.store.subscribe(self._on_notification)
        try:
            while True:
                try:
                    await self.publish_due()
                except StoreUnavailable as exc:
                    await self._store_outage.wait(exc)
                    continue
                self._store_outage.recovered()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self.poll_interval)
                self._wakeup.clear()
        finally:
            unsubscribe()

    def _on_notification(self, note: Notification) -> None:
        if note.kind is NotificationKind.OUTBOX:
            self._wakeup.set()

    def backoff(self, attempts: int) -> float:
        """Seconds before the next try of an entry that failed ``attempts`` times so far."""
        return jittered(min(self.max_backoff, self.first_backoff * 2 ** min(attempts, 30)))

    async def publish_due(self) -> int:
        """Publish every entry due now; returns how many were published."""
        published = 0
        while True:
            entries = await self.store.due_outbox(100)
            if not entries:
                return published
            for entry in entries:
                if await self._publish(entry):
                    published += 1
            if len(entries) < 100:
                return published

    async def _publish(self, entry: OutboxEntry) -> bool:
        try:
            await self.publisher(entry.namespace, entry.event)
        except PublishRejected as exc:
            log.warning("event %s of run %s was refused for good, marked dead (retry it with "
                        "'kenning outbox retry %d'): %s", entry.event.id, entry.run_id,
                        entry.pk, exc)
            await self.store.outbox_dead(entry.pk, str(exc))
            if self.metrics is not None:
                self.metrics.outbox_dead.inc()
            return False
        except Exception as exc:
            delay = self.backoff(entry.attempts)
            self._target_outage.failed(exc)
            log.debug("publishing event %s of run %s failed (attempt %d): %s; retry in %.1fs",
                      entry.event.id, entry.run_id, entry.attempts + 1, exc, delay)
            await self.store.outbox_retry(entry.pk, self.store.clock() + delay, str(exc))
            if self.metrics is not None:
                self.metrics.outbox_failures.inc()
            return False
        self._target_outage.recovered()
        await self.store.outbox_done(entry.pk)
        if self.metrics is not None:
            self.metrics.outbox_published.inc()
        return True
