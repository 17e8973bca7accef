"""Publishing events that workflows emitted: the outbox dispatcher and its publishers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import aiohttp

from kenning.core.models import CloudEventRecord, Notification, NotificationKind
from kenning.core.store import Store

log = logging.getLogger(__name__)

Publisher = Callable[[str, CloudEventRecord], Awaitable[None]]


def local_publisher(store: Store) -> Publisher:
    """Deliver to this engine's own router (embedded default): one workflow wakes another."""
    async def publish(namespace: str, record: CloudEventRecord) -> None:
        await store.accept_events(namespace, [record])
    return publish


def binary_headers(record: CloudEventRecord) -> dict[str, str]:
    """HTTP binary-mode headers of a CloudEvent."""
    from urllib.parse import quote

    headers = {"ce-specversion": record.specversion, "ce-id": record.id,
               "ce-source": record.source, "ce-type": record.type}
    for attr in ("subject", "time", "dataschema"):
        value = getattr(record, attr)
        if value is not None:
            headers[f"ce-{attr}"] = quote(value, safe="".join(
                chr(c) for c in range(0x21, 0x7F) if chr(c) not in ' "%'))
    for name, value in record.extensions.items():
        headers[f"ce-{name}"] = value
    headers["content-type"] = record.datacontenttype or "application/json"
    return headers


class HttpPublisher:
    """POSTs events in binary mode to a URL (``$K_SINK``, a Knative broker)."""

    def __init__(self, url: str, *, token: str | None = None, timeout: float = 10.0) -> None:
        self.url = url
        self._token = token
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, namespace: str, record: CloudEventRecord) -> None:
        import base64

        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        headers = binary_headers(record)
        if self._token:
            headers["authorization"] = f"Bearer {self._token}"
        if record.data_base64 is not None:
            body = base64.b64decode(record.data_base64)
        else:
            body = (record.data or "").encode()
        async with self._session.post(self.url, data=body, headers=headers) as response:
            if response.status >= 300:
                text = (await response.text())[:200]
                raise RuntimeError(f"{self.url} answered {response.status}: {text}")

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()


class OutboxDispatcher:
    """Publishes due outbox entries, retrying failures with exponential backoff."""

    def __init__(self, store: Store, publisher: Publisher, *, poll_interval: float = 1.0,
                 max_backoff: float = 300.0) -> None:
        self.store = store
        self.publisher = publisher
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self._wakeup = asyncio.Event()

    async def run(self) -> None:
        """Publish until cancelled."""
        unsubscribe = self.store.subscribe(self._on_notification)
        try:
            while True:
                try:
                    await self.publish_due()
                except Exception as exc:
                    log.warning("outbox pass failed: %s", exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), self.poll_interval)
                self._wakeup.clear()
        finally:
            unsubscribe()

    def _on_notification(self, note: Notification) -> None:
        if note.kind is NotificationKind.OUTBOX:
            self._wakeup.set()

    async def publish_due(self) -> int:
        """Publish every entry due now; returns how many were published."""
        published = 0
        while True:
            entries = await self.store.due_outbox(100)
            if not entries:
                return published
            for entry in entries:
                try:
                    await self.publisher(entry.namespace, entry.event)
                except Exception as exc:
                    delay = min(self.max_backoff, 0.5 * 2 ** entry.attempts)
                    log.warning("publishing event %s of run %s failed (attempt %d): %s; "
                                "retry in %.1fs", entry.event.id, entry.run_id,
                                entry.attempts + 1, exc, delay)
                    await self.store.outbox_retry(entry.pk, self.store.clock() + delay, str(exc))
                    continue
                await self.store.outbox_done(entry.pk)
                published += 1
            if len(entries) < 100:
                return published
