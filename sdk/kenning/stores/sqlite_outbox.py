"""The transactional outbox on SQLite: entries written with the steps that emit them,
claimed by dispatchers, retried, and dead-lettered when refused for good."""

from __future__ import annotations

from collections.abc import Sequence

from kenning.core.models import Notification, NotificationKind, OutboxEntry
from kenning.stores.rows import outbox_from_row
from kenning.stores.sqlite_base import Conn, Notes, SqliteBase


class SqliteOutbox(SqliteBase):
    """The outbox methods of ``SqliteStore``."""

    async def due_outbox(self, limit: int, claim_seconds: float = 30.0) -> list[OutboxEntry]:
        """Claim the entries whose next attempt is due (hidden from other dispatchers for
        ``claim_seconds``)."""
        def op(conn: Conn, notes: Notes) -> list[OutboxEntry]:
            now = self.clock()
            rows = conn.execute(
                "UPDATE outbox SET next_attempt_at = ? WHERE pk IN (SELECT pk FROM outbox"
                " WHERE next_attempt_at <= ? AND dead_at IS NULL ORDER BY pk LIMIT ?) RETURNING *",
                (now + claim_seconds, now, limit)).fetchall()
            return sorted((outbox_from_row(r) for r in rows), key=lambda e: e.pk)
        return await self._writer.run(op)

    async def outbox_done(self, pk: int) -> None:
        """Remove a published entry."""
        await self._writer.run(
            lambda conn, notes: conn.execute("DELETE FROM outbox WHERE pk = ?", (pk,)))

    async def outbox_retry(self, pk: int, next_attempt_at: float, error: str) -> None:
        """Count a failed publish and schedule the next."""
        await self._writer.run(lambda conn, notes: conn.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
            " WHERE pk = ?", (next_attempt_at, error, pk)))

    async def outbox_dead(self, pk: int, error: str) -> None:
        """Mark an entry dead (kept, never retried until revived)."""
        await self._writer.run(lambda conn, notes: conn.execute(
            "UPDATE outbox SET attempts = attempts + 1, dead_at = ?, last_error = ?"
            " WHERE pk = ?", (self.clock(), error, pk)))

    async def list_outbox(self, *, dead: bool = False, limit: int = 100) -> list[OutboxEntry]:
        """Live (or dead) entries, oldest first."""
        def op(conn: Conn, notes: Notes) -> list[OutboxEntry]:
            rows = conn.execute("SELECT * FROM outbox WHERE (dead_at IS NOT NULL) = ?"
                                " ORDER BY pk LIMIT ?", (dead, limit)).fetchall()
            return [outbox_from_row(r) for r in rows]
        return await self._writer.run(op)

    async def revive_outbox(self, pks: Sequence[int] | None = None) -> int:
        """Make dead entries due again; returns how many."""
        def op(conn: Conn, notes: Notes) -> int:
            update = ("UPDATE outbox SET dead_at = NULL, attempts = 0, next_attempt_at = ?"
                      " WHERE dead_at IS NOT NULL")
            if pks is None:
                count = conn.execute(update, (self.clock(),)).rowcount
            else:
                count = sum(conn.execute(update + " AND pk = ?", (self.clock(), pk)).rowcount
                            for pk in pks)
            if count:
                notes.append(Notification(NotificationKind.OUTBOX))
            return count
        return await self._writer.run(op)

    async def count_outbox(self, *, dead: bool = False) -> int:
        """How many live (or dead) entries."""
        return await self._writer.run(lambda conn, notes: int(conn.execute(
            "SELECT count(*) FROM outbox WHERE (dead_at IS NOT NULL) = ?", (dead,))
            .fetchone()[0]))
