"""Runs held by workers on PostgreSQL: claims (``FOR UPDATE SKIP LOCKED``), leases, and the
fenced writes that move a held run on (attempts, steps, release)."""

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
from kenning.stores import postgres_sql as sql
from kenning.stores.claim_scope import postgres_scope_args
from kenning.stores.postgres_base import Conn, Notes, PostgresBase, lease_lost_error
from kenning.stores.postgres_runs import insert_runs
from kenning.stores.rows import attempts_to_text, child_of, run_from_row, step_from_row


class PostgresClaims(PostgresBase):
    """The worker methods of ``PostgresStore``."""

    async def claim_runs(self, worker_id: str, *, limit: int, lease_seconds: float,
                         workflows: Sequence[str] | None = None,
                         run_ids: Sequence[str] | None = None,
                         reclaim_own: bool = False,
                         recovering: bool = True,
                         scope: ClaimScope | None = None) -> list[ClaimedRun]:
        """Lease up to ``limit`` runnable runs (``FOR UPDATE SKIP LOCKED``) and load all
        their histories in one query."""
        if limit <= 0:
            return []
        query = sql.claim(workflows=workflows is not None, run_ids=run_ids is not None,
                          reclaim=reclaim_own, recovering=recovering,
                          scoped=scope is not None)
        filters: list[Any] = [list(f) for f in (workflows, run_ids) if f is not None]
        if scope is not None:
            filters += postgres_scope_args(scope)

        async def op(conn: Conn, notes: Notes) -> list[ClaimedRun]:
            rows = await conn.fetch(query, worker_id, float(lease_seconds), self._sql_now(),
                                    limit, *filters)
            if not rows:
                return []
            runs = sorted((run_from_row(r) for r in rows), key=lambda r: (r.created_at, r.run_id))
            histories: dict[str, list[Step]] = {run.run_id: [] for run in runs}
            for row in await conn.fetch(sql.HISTORIES, list(histories)):
                histories[row["run_id"]].append(step_from_row(row))
            notes.extend(Notification(NotificationKind.CLAIMED, run.run_id) for run in runs)
            return [ClaimedRun(run, Lease(run.run_id, worker_id, run.epoch),
                               histories[run.run_id]) for run in runs]
        return await self._write(op)

    async def count_live_leases(self, worker_id: str) -> int:
        """Runs ``worker_id`` holds under an unexpired lease."""
        now = self._sql_now()
        return int(await self._read(lambda conn: conn.fetchval(sql.LIVE_LEASES, worker_id, now)))

    async def renew_leases(self, worker_id: str, run_ids: Sequence[str],
                           lease_seconds: float) -> None:
        """Extend the leases this worker still holds."""
        ids = list(run_ids)
        if not ids:
            return

        async def op(conn: Conn, notes: Notes) -> None:
            await conn.execute(sql.RENEW, float(lease_seconds), worker_id, ids,
                               self._sql_now())
        await self._write(op)

    async def record_attempts(self, lease: Lease, attempts: Mapping[int, int]) -> None:
        """Record the activity attempts started, fenced by the lease."""
        text = attempts_to_text(attempts)

        async def op(conn: Conn, notes: Notes) -> None:
            if await conn.fetchval(sql.RECORD_ATTEMPTS, lease.run_id, lease.epoch, text) is None:
                raise await lease_lost_error(conn, lease)
        await self._write(op)

    async def release_run(self, lease: Lease) -> None:
        """Hand a held run back as pending (a lost lease is no error)."""
        async def op(conn: Conn, notes: Notes) -> None:
            try:
                await self._fenced(conn, sql.RELEASE, lease, ())
            except LeaseLost:
                return
            notes.append(Notification(NotificationKind.RUNNABLE, lease.run_id))
        await self._write(op)

    async def append_steps(self, lease: Lease, steps: Sequence[Step],
                           outbox: Sequence[CloudEventRecord] = (), *,
                           attempts: Mapping[int, int] | None = None,
                           children: Sequence[NewRun] = ()) -> None:
        """Record steps and emitted events in one statement, fenced by the lease (and the
        activity attempts started, when given); child runs to start take one more."""
        records = [record_to_json(r) for r in outbox]
        extra: tuple[Any, ...] = (records,)
        query = sql.APPEND
        if attempts is not None:
            query, extra = sql.APPEND_WITH_ATTEMPTS, (records, attempts_to_text(attempts))
        kids = [validate_new_run(child_of(lease, new)) for new in children]

        async def op(conn: Conn, notes: Notes) -> None:
            await self._fenced(conn, query, lease, steps, *extra)
            if records:
                notes.append(Notification(NotificationKind.OUTBOX, lease.run_id))
            if kids:
                await insert_runs(conn, notes, kids, self._now())
        await self._write(op)
