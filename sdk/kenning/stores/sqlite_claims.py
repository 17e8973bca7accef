"""Runs held by workers on SQLite: claims, leases, and the fenced writes that move a held
run on (attempts, steps, release)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kenning.core.errors import LeaseLost
from kenning.core.events import record_to_json
from kenning.core.models import (
    ClaimedRun,
    ClaimScope,
    CloudEventRecord,
    Lease,
    NewRun,
    Notification,
    NotificationKind,
    Step,
)
from kenning.core.validation import validate_new_run
from kenning.stores.claim_scope import sqlite_scope
from kenning.stores.rows import attempts_to_text, child_of, run_from_row
from kenning.stores.sqlite_base import (
    CLEAR_WAIT,
    NO_WAIT,
    Conn,
    Notes,
    SqliteBase,
    fetch_history,
    insert_steps,
    lease_lost_error,
)
from kenning.stores.sqlite_runs import insert_runs


def claim_sql(filters: str = "", sets: str = "", *, recovering: bool = True) -> str:
    """Lease runnable runs in one statement (parameters ``:worker``, ``:expires``, ``:now``,
    ``:limit``, ``:reclaim`` and those of ``filters``).

    Pending, due and expired runs are taken oldest first from one index each (a single
    ``OR`` over the three walks every run in creation order), and the oldest ``:limit`` of
    the three win, as in the PostgreSQL claim."""
    def branch(condition: str, index: str = "") -> str:
        return (f"SELECT * FROM (SELECT run_id, created_at FROM runs{index} WHERE {condition}"
                f"{filters} ORDER BY created_at LIMIT :limit)")
    runnable = " UNION ALL ".join((
        branch("status = 'pending'"),
        # without statistics SQLite may prefer an index on the status, which holds every
        # waiting run; the index of due times holds the suspended ones by when they wake
        branch("status IN ('waiting_for_event', 'waiting_for_timer') AND wake_at <= :now",
               " INDEXED BY runs_due"),
        branch("status = 'running'"
               " AND (lease_expires < :now OR (:reclaim AND lease_owner = :worker))")))
    return (
        "UPDATE runs SET status = 'running', lease_owner = :worker, lease_expires = :expires,"
        " epoch = epoch + 1, started_at = COALESCE(started_at, :now), updated_at = :now,"
        + (" recoveries = recoveries + (status = 'running')" if recovering else
           " recoveries = recoveries") + sets +
        f" WHERE run_id IN (SELECT run_id FROM ({runnable}) ORDER BY created_at LIMIT :limit)"
        " RETURNING *"
    )


def claim_filters(workflows: Sequence[str] | None = None, run_ids: Sequence[str] | None = None,
                  scope: ClaimScope | None = None) -> tuple[str, str, dict[str, Any]]:
    """(filters, sets, named parameters) of a claim kept to these workflows, runs and
    scope."""
    filters = sets = ""
    params: dict[str, Any] = {}
    if scope is not None:
        filters, sets, params = sqlite_scope(scope)
    if workflows is not None:
        names = {f"wf{i}": w for i, w in enumerate(workflows)}
        filters += f" AND workflow IN ({', '.join(':' + k for k in names) or 'NULL'})"
        params.update(names)
    if run_ids is not None:
        ids = {f"id{i}": r for i, r in enumerate(run_ids)}
        filters += f" AND run_id IN ({', '.join(':' + k for k in ids) or 'NULL'})"
        params.update(ids)
    return filters, sets, params


class SqliteClaims(SqliteBase):
    """The worker methods of ``SqliteStore``."""

    async def claim_runs(self, worker_id: str, *, limit: int, lease_seconds: float,
                         workflows: Sequence[str] | None = None,
                         run_ids: Sequence[str] | None = None,
                         reclaim_own: bool = False,
                         recovering: bool = True,
                         scope: ClaimScope | None = None) -> list[ClaimedRun]:
        """Lease up to ``limit`` runnable runs and load their histories."""
        filters, sets, params = claim_filters(workflows, run_ids, scope)
        sql = claim_sql(filters, sets, recovering=recovering)

        def op(conn: Conn, notes: Notes) -> list[ClaimedRun]:
            now = self.clock()
            rows = conn.execute(sql, {**params, "now": now, "worker": worker_id,
                                      "expires": now + lease_seconds, "limit": limit,
                                      "reclaim": int(reclaim_own)}).fetchall()
            claimed = []
            for row in rows:
                run = run_from_row(row)
                claimed.append(ClaimedRun(run, Lease(run.run_id, worker_id, run.epoch),
                                          fetch_history(conn, run.run_id)))
                notes.append(Notification(NotificationKind.CLAIMED, run.run_id))
            return claimed
        return await self._writer.run(op)

    async def count_live_leases(self, worker_id: str) -> int:
        """Runs ``worker_id`` holds under an unexpired lease."""
        def op(conn: Conn, notes: Notes) -> int:
            return int(conn.execute(
                "SELECT COUNT(*) FROM runs WHERE status = 'running' AND lease_owner = ?"
                " AND lease_expires >= ?", (worker_id, self.clock())).fetchone()[0])
        return await self._writer.run(op)

    async def renew_leases(self, worker_id: str, run_ids: Sequence[str],
                           lease_seconds: float) -> None:
        """Extend the leases this worker still holds."""
        ids = list(run_ids)

        def op(conn: Conn, notes: Notes) -> None:
            expires = self.clock() + lease_seconds
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ", ".join("?" * len(chunk))
                conn.execute(
                    "UPDATE runs SET lease_expires = ? WHERE lease_owner = ?"
                    f" AND status = 'running' AND run_id IN ({marks})",
                    (expires, worker_id, *chunk))
        if ids:
            await self._writer.run(op)

    async def record_attempts(self, lease: Lease, attempts: Mapping[int, int]) -> None:
        """Record the activity attempts started, fenced by the lease."""
        text = attempts_to_text(attempts)

        def op(conn: Conn, notes: Notes) -> None:
            cur = conn.execute("UPDATE runs SET activity_attempts = ? WHERE run_id = ?"
                               " AND epoch = ? AND status = 'running'",
                               (text, lease.run_id, lease.epoch))
            if cur.rowcount != 1:
                raise lease_lost_error(conn, lease)
        await self._writer.run(op)

    async def release_run(self, lease: Lease) -> None:
        """Hand a held run back as pending."""
        def op(conn: Conn, notes: Notes) -> None:
            try:
                self._fence(conn, lease, ", status = 'pending', lease_owner = NULL,"
                            " lease_expires = NULL, activity_attempts = NULL")
            except LeaseLost:
                return
            notes.append(Notification(NotificationKind.RUNNABLE, lease.run_id))
        await self._writer.run(op)

    async def append_steps(self, lease: Lease, steps: Sequence[Step],
                           outbox: Sequence[CloudEventRecord] = (), *,
                           attempts: Mapping[int, int] | None = None,
                           children: Sequence[NewRun] = ()) -> None:
        """Record steps and emitted events in one commit, fenced by the lease (and the
        activity attempts started, when given), and create the child runs given."""
        sets, params = ", " + CLEAR_WAIT, NO_WAIT
        if attempts is not None:
            sets += ", activity_attempts = :attempts"
            params = {**params, "attempts": attempts_to_text(attempts)}
        kids = [validate_new_run(child_of(lease, new)) for new in children]

        def op(conn: Conn, notes: Notes) -> None:
            now = self._fence(conn, lease, sets, params)
            insert_steps(conn, lease.run_id, steps)
            if outbox:
                namespace = conn.execute("SELECT namespace FROM runs WHERE run_id = ?",
                                         (lease.run_id,)).fetchone()[0]
                conn.executemany(
                    "INSERT INTO outbox (run_id, namespace, record, next_attempt_at, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(lease.run_id, namespace, record_to_json(r), now, now) for r in outbox])
                notes.append(Notification(NotificationKind.OUTBOX, lease.run_id))
            if kids:
                insert_runs(conn, notes, kids, self.clock())
        await self._writer.run(op)
