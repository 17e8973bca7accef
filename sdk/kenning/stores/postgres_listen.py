"""Other processes' changes, heard through LISTEN on one dedicated connection.

The connection is watched: when it drops (server restart, network) it is opened again with
backoff, and listeners then hear a ``RUNNABLE`` notification without a run id, because
changes made while it was down were missed and a worker should look for work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from kenning.core.errors import StoreUnavailable
from kenning.core.models import Notification, NotificationKind
from kenning.core.outage import Outage
from kenning.stores.postgres_errors import is_connection_error

log = logging.getLogger(__name__)

_HEALTH_INTERVAL = 10.0
_MAX_BACKOFF = 5.0


def parse_payload(payload: str) -> Notification | None:
    """A ``Notification`` from a ``kind|run_id|wake_at`` payload, or ``None`` if foreign."""
    kind_text, sep, rest = payload.partition("|")
    run_id, sep2, wake_text = rest.rpartition("|")
    if not sep or not sep2:
        return None
    try:
        kind = NotificationKind(kind_text)
        wake_at = float(wake_text) if wake_text else None
    except ValueError:
        return None
    return Notification(kind, run_id or None, wake_at)


class NotifyListener:
    """Keeps one connection LISTENing on ``channel`` and forwards what others commit."""

    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        on_notification: Callable[[list[Notification]], None],
        is_own: Callable[[int], bool],
        channel: str,
    ) -> None:
        self._connect = connect
        self._on_notification = on_notification
        self._is_own = is_own
        self._channel = channel
        self._conn: Any = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        """True while the LISTEN connection is open."""
        return self._conn is not None and not self._conn.is_closed()

    async def start(self) -> None:
        """Open the connection (raising if that fails) and keep it open from now on."""
        await self._open()
        self._task = asyncio.create_task(self._supervise(), name="kenning-pg-listen")

    async def stop(self) -> None:
        """Stop listening and close the connection."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close()

    async def _open(self) -> None:
        conn = await self._connect()
        try:
            await conn.add_listener(self._channel, self._on_notify)
        except BaseException:
            conn.terminate()
            raise
        conn.add_termination_listener(self._on_terminated)
        self._conn = conn
        self._lost.clear()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.remove_termination_listener(self._on_terminated)
            try:
                await asyncio.wait_for(conn.close(), 2.0)
            except Exception:
                conn.terminate()

    def _on_terminated(self, conn: Any) -> None:
        if conn is self._conn:
            self._lost.set()

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if self._is_own(pid):
            return  # this process dispatched it already, right after its commit
        note = parse_payload(payload)
        if note is None:
            log.debug("ignoring foreign notification %r on %s", payload, channel)
            return
        self._on_notification([note])

    async def _supervise(self) -> None:
        # Never ends but by cancellation: whatever goes wrong, listening is tried again.
        outage = Outage(f"LISTEN connection to PostgreSQL ({self._channel})", log,
                        max_delay=_MAX_BACKOFF)
        while True:
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._lost.wait(), _HEALTH_INTERVAL)
                if not self._lost.is_set() and await self._healthy():
                    continue
                outage.failed(StoreUnavailable("the connection was lost"))
                await self._close()
                await self._reconnect(outage)
                outage.recovered()
                self._on_notification([Notification(NotificationKind.RUNNABLE)])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug here must not end listening for good
                log.exception("LISTEN supervisor: unexpected error; listening again")
                self._lost.set()
                await asyncio.sleep(outage.failed(exc))

    async def _healthy(self) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed():
            return False
        try:
            await asyncio.wait_for(conn.fetchval("SELECT 1"), _HEALTH_INTERVAL / 2)
        except Exception:
            return False
        return True

    async def _reconnect(self, outage: Outage) -> None:
        while True:
            try:
                await self._open()
            except Exception as exc:
                if not is_connection_error(exc):
                    log.debug("reopening the LISTEN connection failed", exc_info=True)
                await asyncio.sleep(outage.failed(exc))
                continue
            return
