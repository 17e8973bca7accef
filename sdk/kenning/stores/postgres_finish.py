"""How runs end or go on, on PostgreSQL: finished, cancelled with their descendants, or
continued as new (the chapter closed and archived); a child that ends tells its parent."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from kenning.core.models import (
    CloudEventRecord,
    Lease,
    Notification,
    NotificationKind,
    Run,
    RunStatus,
    Step,
)
from kenning.core.validation import MAX_INPUT_BYTES, check_size
from kenning.stores import postgres_sql as sql
from kenning.stores.postgres_accept import accept_batches
from kenning.stores.postgres_base import Conn, Notes, PostgresBase, fetch_run
from kenning.stores.rows import CHILD_EVENT_EXPIRY, child_finished_event, run_from_row


async def tell_parents(conn: Conn, notes: Notes, events: list[tuple[str, CloudEventRecord]],
                       now: float) -> None:
    """Address finished children's events (each with its parent's namespace) to their
    parents, kept until the parent is purged, and resume the parents that wait for them."""
    if not events:
        return
    by_namespace: dict[str, list[CloudEventRecord]] = defaultdict(list)
    for namespace, record in events:
        by_namespace[namespace].append(record)
    for _results, accepted in await accept_batches(
            conn, list(by_namespace.items()), now, CHILD_EVENT_EXPIRY):
        notes.extend(accepted)


class PostgresFinish(PostgresBase):
    """The methods of ``PostgresStore`` that end a run or continue it as new."""

    async def finish_run(self, lease: Lease, status: RunStatus, *, result: str | None = None,
                         error: str | None = None, steps: Sequence[Step] = ()) -> None:
        """End the run completed or failed; a child tells its parent in the same commit."""
        async def op(conn: Conn, notes: Notes) -> None:
            row, now = await self._fenced_row(conn, sql.FINISH, lease, steps, status.value,
                                              result, error)
            notes.append(Notification(NotificationKind.FINISHED, lease.run_id))
            if row["parent_namespace"] is not None:
                record = child_finished_event(
                    child=lease.run_id, namespace=row["namespace"], chapter=row["chapter"],
                    parent=row["parent_run_id"], status=status.value, result=result,
                    error=error, now=now)
                await tell_parents(conn, notes, [(row["parent_namespace"], record)], now)
        await self._write(op)

    async def cancel_run(self, run_id: str, reason: str) -> Run:
        """Cancel an unfinished run and its unfinished descendants, fencing out their
        workers; each cancelled child tells its parent."""
        async def op(conn: Conn, notes: Notes) -> Run:
            now = self._now()
            rows = await conn.fetch(sql.CANCEL, run_id, reason, now,
                                    f"cancelled with {run_id}: {reason}")
            top = next((row for row in rows if row["run_id"] == run_id), None)
            if top is None:
                return await fetch_run(conn, run_id)
            for row in rows:
                notes.append(Notification(NotificationKind.CANCELLED, row["run_id"]))
                notes.append(Notification(NotificationKind.FINISHED, row["run_id"]))
            await tell_parents(conn, notes, [
                (row["parent_namespace"], child_finished_event(
                    child=row["run_id"], namespace=row["namespace"], chapter=row["chapter"],
                    parent=row["parent_run_id"], status=RunStatus.CANCELLED.value,
                    result=None, error=row["error"], now=now))
                for row in rows if row["parent_namespace"] is not None], now)
            return run_from_row(top)
        return await self._write(op)

    async def continue_run(self, lease: Lease, input: str, steps: Sequence[Step] = ()) -> int:
        """Close the run's chapter (history and input archived) and make it pending again
        with ``input`` and an empty history; returns the new chapter's number."""
        check_size("input", input, MAX_INPUT_BYTES)

        async def op(conn: Conn, notes: Notes) -> int:
            row, _now = await self._fenced_row(conn, sql.CONTINUE, lease, steps, input)
            notes.append(Notification(NotificationKind.RUNNABLE, lease.run_id))
            return int(row["chapter"])
        return await self._write(op)
