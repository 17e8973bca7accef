"""How runs end or go on, on SQLite: finished, cancelled with their descendants, or continued
as new (the chapter closed and archived); a child that ends tells its parent."""

from __future__ import annotations

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
from kenning.stores.rows import CHILD_EVENT_EXPIRY, child_finished_event
from kenning.stores.sqlite_accept import accept_one
from kenning.stores.sqlite_base import (
    CLEAR_WAIT,
    HISTORY_COLUMNS,
    NO_WAIT,
    UNFINISHED,
    Conn,
    Notes,
    SqliteBase,
    fetch_run,
    insert_steps,
    lease_lost_error,
)


def tell_parent(conn: Conn, notes: Notes, parent: str, record: CloudEventRecord,
                now: float) -> None:
    """Address a finished child's event to its parent (kept until the parent is purged)
    and resume the parent if it waits for it."""
    row = conn.execute("SELECT namespace FROM runs WHERE run_id = ?", (parent,)).fetchone()
    if row is not None:
        accept_one(conn, notes, row[0], record, now, CHILD_EVENT_EXPIRY)


class SqliteFinish(SqliteBase):
    """The methods of ``SqliteStore`` that end a run or continue it as new."""

    async def finish_run(self, lease: Lease, status: RunStatus, *, result: str | None = None,
                         error: str | None = None, steps: Sequence[Step] = ()) -> None:
        """End the run completed or failed; a child tells its parent in the same commit."""
        sets = (", status = :status, result = :result, error = :error, finished_at = :now,"
                f" lease_owner = NULL, lease_expires = NULL, {CLEAR_WAIT}")
        params = {"status": status.value, "result": result, "error": error, **NO_WAIT}

        def op(conn: Conn, notes: Notes) -> None:
            now = self._fence(conn, lease, sets, params)
            insert_steps(conn, lease.run_id, steps)
            notes.append(Notification(NotificationKind.FINISHED, lease.run_id))
            row = conn.execute("SELECT namespace, parent_run_id, chapter FROM runs"
                               " WHERE run_id = ?", (lease.run_id,)).fetchone()
            if row["parent_run_id"] is not None:
                tell_parent(conn, notes, row["parent_run_id"], child_finished_event(
                    child=lease.run_id, namespace=row["namespace"], chapter=row["chapter"],
                    parent=row["parent_run_id"], status=status.value, result=result,
                    error=error, now=now), now)
        await self._writer.run(op)

    async def cancel_run(self, run_id: str, reason: str) -> Run:
        """Cancel an unfinished run and its unfinished descendants, fencing out their
        workers; each cancelled child tells its parent."""
        def op(conn: Conn, notes: Notes) -> Run:
            now = self.clock()
            rows = conn.execute(
                f"WITH RECURSIVE t(run_id) AS (SELECT run_id FROM runs WHERE run_id = :run_id"
                f" AND {UNFINISHED} UNION SELECT r.run_id FROM runs r JOIN t"
                " ON r.parent_run_id = t.run_id)"
                " UPDATE runs SET status = 'cancelled',"
                " error = CASE WHEN run_id = :run_id THEN :reason ELSE :inherited END,"
                " finished_at = :now, updated_at = :now, epoch = epoch + 1,"
                f" lease_owner = NULL, lease_expires = NULL, {CLEAR_WAIT}"
                f" WHERE run_id IN (SELECT run_id FROM t) AND {UNFINISHED} RETURNING *",
                {"reason": reason, "inherited": f"cancelled with {run_id}: {reason}",
                 "now": now, "run_id": run_id, **NO_WAIT}).fetchall()
            for row in rows:
                notes.append(Notification(NotificationKind.CANCELLED, row["run_id"]))
                notes.append(Notification(NotificationKind.FINISHED, row["run_id"]))
            for row in rows:
                if row["parent_run_id"] is not None:
                    tell_parent(conn, notes, row["parent_run_id"], child_finished_event(
                        child=row["run_id"], namespace=row["namespace"], chapter=row["chapter"],
                        parent=row["parent_run_id"], status=RunStatus.CANCELLED.value,
                        result=None, error=row["error"], now=now), now)
            return fetch_run(conn, run_id)
        return await self._writer.run(op)

    async def continue_run(self, lease: Lease, input: str, steps: Sequence[Step] = ()) -> int:
        """Close the run's chapter (history and input archived) and make it pending again
        with ``input`` and an empty history; returns the new chapter's number."""
        check_size("input", input, MAX_INPUT_BYTES)

        def op(conn: Conn, notes: Notes) -> int:
            old = conn.execute("SELECT namespace, input, chapter FROM runs WHERE run_id = ?"
                               " AND epoch = ? AND status = 'running'",
                               (lease.run_id, lease.epoch)).fetchone()
            if old is None:
                raise lease_lost_error(conn, lease)
            closed = int(old["chapter"])
            now = self._fence(conn, lease, ", status = 'pending', input = :input,"
                              " chapter = chapter + 1, lease_owner = NULL, lease_expires = NULL,"
                              " activity_attempts = NULL, result = NULL, error = NULL, "
                              + CLEAR_WAIT, {"input": input, **NO_WAIT})
            insert_steps(conn, lease.run_id, steps)
            moved = conn.execute(
                f"INSERT INTO history_chapters (run_id, chapter, {HISTORY_COLUMNS})"
                f" SELECT run_id, ?, {HISTORY_COLUMNS} FROM history WHERE run_id = ?",
                (closed, lease.run_id)).rowcount
            conn.execute("DELETE FROM history WHERE run_id = ?", (lease.run_id,))
            conn.execute("INSERT INTO chapters (run_id, chapter, namespace, input, closed_at,"
                         " steps) VALUES (?, ?, ?, ?, ?, ?)",
                         (lease.run_id, closed, old["namespace"], old["input"], now, moved))
            notes.append(Notification(NotificationKind.RUNNABLE, lease.run_id))
            return closed + 1
        return await self._writer.run(op)
