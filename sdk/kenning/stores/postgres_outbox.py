"""The transactional outbox on PostgreSQL: entries written with the steps that emit them,
claimed by dispatchers (``SKIP LOCKED``), retried, and dead-lettered when refused for good."""

from __future__ import annotations

from collections.abc import Sequence

from kenning.core.models import Notification, NotificationKind, OutboxEntry
from kenning.stores import postgres_sql as sql
from kenning.stores.postgres_base import Conn, Notes, PostgresBase
from kenning.stores.rows import outbox_from_row


class PostgresOutbox(PostgresBase):
    """The outbox methods of ``PostgresStore``."""

    async def due_outbox(self, limit: int, claim_seconds: float = 30.0) -> list[OutboxEntry]:
        """Claim the entries whose next attempt is due (hidden from other dispatchers for
        ``claim_seconds``)."""
        async def op(conn: Conn, notes: Notes) -> list[OutboxEntry]:
            rows = await conn.fetch(sql.DUE_OUTBOX, self._now(), limit, claim_seconds)
            return sorted((outbox_from_row(r) for r in rows), key=lambda e: e.pk)
        return await self._write(op)

    async def outbox_done(self, pk: int) -> None:
        """Remove a published entry."""
        async def op(conn: Conn, notes: Notes) -> None:
            await conn.execute(sql.OUTBOX_DONE, pk)
        await self._write(op)

    async def outbox_retry(self, pk: int, next_attempt_at: float, error: str) -> None:
        """Count a failed publish and schedule the next."""
        async def op(conn: Conn, notes: Notes) -> None:
            await conn.execute(sql.OUTBOX_RETRY, pk, float(next_attempt_at), error)
        await self._write(op)

    async def outbox_dead(self, pk: int, error: str) -> None:
        """Mark an entry dead (kept, never retried until revived)."""
        async def op(conn: Conn, notes: Notes) -> None:
            await conn.execute(sql.OUTBOX_DEAD, pk, self._now(), error)
        await self._write(op)

    async def list_outbox(self, *, dead: bool = False, limit: int = 100) -> list[OutboxEntry]:
        """Live (or dead) entries, oldest first."""
        rows = await self._read(lambda conn: conn.fetch(sql.LIST_OUTBOX, dead, limit))
        return [outbox_from_row(r) for r in rows]

    async def revive_outbox(self, pks: Sequence[int] | None = None) -> int:
        """Make dead entries due again; returns how many."""
        async def op(conn: Conn, notes: Notes) -> int:
            done = await conn.execute(sql.REVIVE_OUTBOX, self._now(),
                                      None if pks is None else list(pks))
            count = int(done.split()[-1])
            if count:
                notes.append(Notification(NotificationKind.OUTBOX))
            return count
        return await self._write(op)

    async def count_outbox(self, *, dead: bool = False) -> int:
        """How many live (or dead) entries."""
        return int(await self._read(lambda conn: conn.fetchval(sql.COUNT_OUTBOX, dead)))
