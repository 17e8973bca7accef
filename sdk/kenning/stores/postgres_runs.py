"""Runs on PostgreSQL: created (one or many in a statement), read, listed and counted."""

from __future__ import annotations

import json
from collections.abc import Sequence

from kenning.core.models import (
    BuildCount,
    Chapter,
    NewRun,
    Notification,
    NotificationKind,
    Run,
    RunCount,
    RunStatus,
    Step,
)
from kenning.core.validation import validate_new_run
from kenning.stores import postgres_sql as sql
from kenning.stores import run_scans as scans
from kenning.stores.postgres_base import Conn, Notes, PostgresBase, fetch_run
from kenning.stores.rows import (
    chapter_from_row,
    first_created,
    run_from_row,
    runnable_notes,
    step_from_row,
)


async def insert_runs(conn: Conn, notes: Notes, batch: list[NewRun], now: float
                      ) -> list[tuple[bool, str]]:
    """Create ``batch`` (validated) as pending runs in one statement, idempotent per id."""
    rows = await conn.fetch(
        sql.CREATE_RUNS, now, [n.run_id for n in batch],
        [n.namespace for n in batch], [n.workflow for n in batch],
        [n.input for n in batch], [n.pool for n in batch],
        [json.dumps(n.labels) for n in batch], [n.build_id for n in batch],
        [n.upgrade for n in batch], [n.parent_run_id for n in batch])
    found = {row["run_id"]: (bool(row["created"]), row["workflow"]) for row in rows}
    notes.extend(runnable_notes([i for i, (made, _) in found.items() if made]))
    return first_created(batch, found)


class PostgresRuns(PostgresBase):
    """The run methods of ``PostgresStore``."""

    async def create_run(self, new: NewRun) -> tuple[Run, bool]:
        """Create a pending run; an existing id returns that run unchanged."""
        validate_new_run(new)

        async def op(conn: Conn, notes: Notes) -> tuple[Run, bool]:
            row = await conn.fetchrow(sql.CREATE_RUN, new.run_id, new.namespace, new.workflow,
                                      new.input, self._now(), new.pool, json.dumps(new.labels),
                                      new.build_id, new.upgrade, new.parent_run_id)
            if row is not None:
                notes.append(Notification(NotificationKind.RUNNABLE, new.run_id))
                return run_from_row(row), True
            return await fetch_run(conn, new.run_id), False
        return await self._write(op)

    async def create_runs(self, news: Sequence[NewRun]) -> list[tuple[bool, str]]:
        """Create many pending runs in one statement (idempotent per id)."""
        batch = [validate_new_run(new) for new in news]
        if not batch:
            return []

        async def op(conn: Conn, notes: Notes) -> list[tuple[bool, str]]:
            return await insert_runs(conn, notes, batch, self._now())
        return await self._write(op)

    async def get_run(self, run_id: str) -> Run | None:
        """The run, or ``None``."""
        row = await self._read(lambda conn: conn.fetchrow(sql.GET_RUN, run_id))
        return None if row is None else run_from_row(row)

    async def list_runs(self, *, namespace: str | None = None, status: RunStatus | None = None,
                        workflow: str | None = None, parent: str | None = None,
                        limit: int = 100) -> list[Run]:
        """Runs, newest first (``parent``: the children of that run)."""
        status_value = status.value if status is not None else None
        query = sql.list_runs(namespace=namespace is not None, status=status is not None,
                              workflow=workflow is not None, parent=parent is not None)
        args = [v for v in (namespace, status_value, workflow, parent) if v is not None]
        rows = await self._read(lambda conn: conn.fetch(query, *args, limit))
        return [run_from_row(r) for r in rows]

    async def load_history(self, run_id: str, *, chapter: int | None = None) -> list[Step]:
        """The run's history in order (one query): the current chapter, or ``chapter``."""
        if chapter is None:
            rows = await self._read(lambda conn: conn.fetch(sql.HISTORY, run_id))
        else:
            rows = await self._read(lambda conn: conn.fetch(sql.CHAPTER_HISTORY, run_id,
                                                            int(chapter)))
        return [step_from_row(r) for r in rows]

    async def list_chapters(self, run_id: str) -> list[Chapter]:
        """The run's closed chapters, oldest first."""
        rows = await self._read(lambda conn: conn.fetch(sql.CHAPTERS, run_id))
        return [chapter_from_row(r) for r in rows]

    # -- the operator's reads -------------------------------------------------------------
    async def count_unfinished_by_build(self, *, due_before: float | None = None
                                        ) -> list[BuildCount]:
        """Unfinished runs by (namespace, pool, workflow, build, upgrade policy)."""
        due = None if due_before is None else float(due_before)
        rows = await self._read(lambda conn: conn.fetch(sql.UNFINISHED_BY_BUILD, due))
        return scans.build_counts(rows)

    async def count_active_runs(self, *, wake_before: float) -> list[RunCount]:
        """Runs that need a worker, grouped by (namespace, workflow, pool)."""
        rows = await self._read(lambda conn: conn.fetch(scans.PG_COUNT_ACTIVE,
                                                        float(wake_before)))
        return scans.run_counts(rows)

    async def list_unfinished_runs(self, *, after: tuple[float, str] | None = None,
                                   limit: int = 1000) -> list[Run]:
        """Unfinished runs, oldest first, the page after ``after``."""
        if after is None:
            rows = await self._read(lambda conn: conn.fetch(scans.PG_UNFINISHED_FIRST, limit))
        else:
            rows = await self._read(lambda conn: conn.fetch(
                scans.PG_UNFINISHED_AFTER, limit, float(after[0]), after[1]))
        return [run_from_row(r) for r in rows]
