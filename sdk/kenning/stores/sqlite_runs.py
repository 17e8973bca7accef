"""Runs on SQLite: created (one or many in a transaction), read, listed and counted."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

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
from kenning.stores import run_scans as scans
from kenning.stores.rows import (
    chapter_from_row,
    first_created,
    run_from_row,
    runnable_notes,
    step_from_row,
)
from kenning.stores.sqlite_base import (
    HISTORY_COLUMNS,
    Conn,
    Notes,
    SqliteBase,
    fetch_history,
    fetch_run,
)

_INSERT_RUN = (
    "INSERT OR IGNORE INTO runs (run_id, namespace, workflow, input, status, created_at,"
    " updated_at, pool, labels, build_id, upgrade, parent_run_id)"
    " VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?)"
)


def _run_values(new: NewRun, now: float) -> tuple[Any, ...]:
    return (new.run_id, new.namespace, new.workflow, new.input, now, now, new.pool,
            json.dumps(new.labels), new.build_id, new.upgrade, new.parent_run_id)


def insert_runs(conn: Conn, notes: Notes, batch: list[NewRun], now: float
                ) -> list[tuple[bool, str]]:
    """Create ``batch`` (validated) as pending runs, idempotent per id."""
    found: dict[str, tuple[bool, str]] = {}
    for new in batch:
        if new.run_id in found:
            continue
        cur = conn.execute(_INSERT_RUN, _run_values(new, now))
        if cur.rowcount == 1:
            found[new.run_id] = (True, new.workflow)
        else:
            row = conn.execute("SELECT workflow FROM runs WHERE run_id = ?",
                               (new.run_id,)).fetchone()
            found[new.run_id] = (False, row[0])
    notes.extend(runnable_notes([i for i, (made, _) in found.items() if made]))
    return first_created(batch, found)


class SqliteRuns(SqliteBase):
    """The run methods of ``SqliteStore``."""

    async def create_run(self, new: NewRun) -> tuple[Run, bool]:
        """Create a pending run; an existing id returns that run unchanged."""
        validate_new_run(new)

        def op(conn: Conn, notes: Notes) -> tuple[Run, bool]:
            now = self.clock()
            cur = conn.execute(_INSERT_RUN, _run_values(new, now))
            created = cur.rowcount == 1
            if created:
                notes.append(Notification(NotificationKind.RUNNABLE, new.run_id))
            return fetch_run(conn, new.run_id), created
        return await self._writer.run(op)

    async def create_runs(self, news: Sequence[NewRun]) -> list[tuple[bool, str]]:
        """Create many pending runs in one transaction (idempotent per id)."""
        batch = [validate_new_run(new) for new in news]

        def op(conn: Conn, notes: Notes) -> list[tuple[bool, str]]:
            return insert_runs(conn, notes, batch, self.clock())
        return await self._writer.run(op) if batch else []

    async def get_run(self, run_id: str) -> Run | None:
        """The run, or ``None``."""
        def op(conn: Conn, notes: Notes) -> Run | None:
            row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            return None if row is None else run_from_row(row)
        return await self._writer.run(op)

    async def list_runs(self, *, namespace: str | None = None, status: RunStatus | None = None,
                        workflow: str | None = None, parent: str | None = None,
                        limit: int = 100) -> list[Run]:
        """Runs, newest first (``parent``: the children of that run)."""
        clauses, params = [], []
        for column, value in (("namespace", namespace), ("workflow", workflow),
                              ("status", status.value if status else None),
                              ("parent_run_id", parent)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM runs {where} ORDER BY created_at DESC, run_id LIMIT ?"

        def op(conn: Conn, notes: Notes) -> list[Run]:
            return [run_from_row(r) for r in conn.execute(sql, (*params, limit))]
        return await self._writer.run(op)

    async def load_history(self, run_id: str, *, chapter: int | None = None) -> list[Step]:
        """The run's history in order: the current chapter, or ``chapter``."""
        def op(conn: Conn, notes: Notes) -> list[Step]:
            if chapter is None:
                return fetch_history(conn, run_id)
            rows = conn.execute(
                f"SELECT {HISTORY_COLUMNS} FROM history_chapters WHERE run_id = :run"
                f" AND chapter = :chapter UNION ALL SELECT {HISTORY_COLUMNS} FROM history"
                " WHERE run_id = :run AND :chapter = (SELECT chapter FROM runs"
                " WHERE run_id = :run) ORDER BY seq", {"run": run_id, "chapter": int(chapter)})
            return [step_from_row(r) for r in rows]
        return await self._writer.run(op)

    async def list_chapters(self, run_id: str) -> list[Chapter]:
        """The run's closed chapters, oldest first."""
        def op(conn: Conn, notes: Notes) -> list[Chapter]:
            rows = conn.execute("SELECT * FROM chapters WHERE run_id = ? ORDER BY chapter",
                                (run_id,))
            return [chapter_from_row(r) for r in rows]
        return await self._writer.run(op)

    # -- the operator's reads -------------------------------------------------------------
    async def count_unfinished_by_build(self, *, due_before: float | None = None
                                        ) -> list[BuildCount]:
        """Unfinished runs by (namespace, pool, workflow, build, upgrade policy)."""
        def op(conn: Conn, notes: Notes) -> list[BuildCount]:
            rows = conn.execute(
                "SELECT namespace, pool, workflow, build_id, upgrade, COUNT(*) AS unfinished,"
                " SUM(status IN ('pending', 'running') OR wake_at <= :due) AS runnable"
                " FROM runs WHERE status IN ('pending', 'running', 'waiting_for_event',"
                " 'waiting_for_timer') GROUP BY namespace, pool, workflow, build_id, upgrade",
                {"due": due_before})
            return scans.build_counts(rows)
        return await self._writer.run(op)

    async def count_active_runs(self, *, wake_before: float) -> list[RunCount]:
        """Runs that need a worker, grouped by (namespace, workflow, pool)."""
        def op(conn: Conn, notes: Notes) -> list[RunCount]:
            return scans.run_counts(conn.execute(scans.SQLITE_COUNT_ACTIVE, (wake_before,)))
        return await self._writer.run(op)

    async def list_unfinished_runs(self, *, after: tuple[float, str] | None = None,
                                   limit: int = 1000) -> list[Run]:
        """Unfinished runs, oldest first, the page after ``after``."""
        def op(conn: Conn, notes: Notes) -> list[Run]:
            rows = conn.execute(scans.SQLITE_UNFINISHED_FIRST, (limit,)) if after is None \
                else conn.execute(scans.SQLITE_UNFINISHED_AFTER, (after[0], after[1], limit))
            return [run_from_row(r) for r in rows]
        return await self._writer.run(op)
