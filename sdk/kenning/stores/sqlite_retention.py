"""Retention of finished runs on SQLite, the same rules as ``postgres_retention``."""

from __future__ import annotations

import sqlite3

from kenning.stores.rows import retention_cutoff
from kenning.stores.sqlite_base import SqliteBase

FINISHED = "status IN ('completed', 'failed', 'cancelled')"


def purge_batch(conn: sqlite3.Connection, now: float, default_retention: float,
                before: float | None, namespace: str | None, limit: int) -> int:
    """Delete up to ``limit`` finished runs (see ``Store.purge_finished``) with their
    history, closed chapters and inbox, and up to ``limit`` closed chapters as old; how
    many runs."""
    settings = dict(conn.execute("SELECT namespace, finished_retention FROM namespace_settings"))

    def cutoff(space: str) -> float | None:
        return retention_cutoff(settings, space, default_retention, before, now)

    purged = 0
    spaces = [namespace] if namespace is not None else [row[0] for row in conn.execute(
        f"SELECT DISTINCT namespace FROM runs WHERE {FINISHED} ORDER BY namespace")]
    for space in spaces:
        until = cutoff(space)
        if until is None:
            continue
        ids = [row[0] for row in conn.execute(
            f"SELECT run_id FROM runs WHERE namespace = ? AND {FINISHED} AND finished_at < ?"
            " ORDER BY finished_at LIMIT ?", (space, until, limit - purged))]
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ", ".join("?" * len(chunk))
            for table, column in (("history", "run_id"), ("consumptions", "run_id"),
                                  ("chapters", "run_id"), ("history_chapters", "run_id"),
                                  ("events", "target_run")):
                conn.execute(f"DELETE FROM {table} WHERE {column} IN ({marks})", chunk)
            conn.execute(f"DELETE FROM runs WHERE run_id IN ({marks}) AND {FINISHED}", chunk)
        purged += len(ids)
        if purged >= limit:
            break
    dropped = 0
    spaces = [namespace] if namespace is not None else [row[0] for row in conn.execute(
        "SELECT DISTINCT namespace FROM chapters ORDER BY namespace")]
    for space in spaces:
        until = cutoff(space)
        if until is None:
            continue
        old = conn.execute("SELECT run_id, chapter FROM chapters WHERE namespace = ?"
                           " AND closed_at < ? ORDER BY closed_at LIMIT ?",
                           (space, until, limit - dropped)).fetchall()
        conn.executemany("DELETE FROM history_chapters WHERE run_id = ? AND chapter = ?",
                         [tuple(row) for row in old])
        conn.executemany("DELETE FROM chapters WHERE run_id = ? AND chapter = ?",
                         [tuple(row) for row in old])
        dropped += len(old)
        if dropped >= limit:
            break
    return purged


def retention_of(conn: sqlite3.Connection, namespace: str, default_retention: float) -> float:
    """The namespace's retention of finished runs in seconds (0: forever)."""
    row = conn.execute("SELECT finished_retention FROM namespace_settings WHERE namespace = ?",
                       (namespace,)).fetchone()
    return default_retention if row is None else float(row[0])


class SqliteRetention(SqliteBase):
    """The retention methods of ``SqliteStore``."""

    async def purge_finished(self, *, before: float | None = None,
                             namespace: str | None = None, limit: int = 500) -> int:
        """Delete a batch of finished runs with their history, oldest first."""
        return int(await self._writer.run(lambda conn, notes: purge_batch(
            conn, self.clock(), self.finished_retention_default, before, namespace, limit)))

    async def set_finished_retention(self, namespace: str, seconds: float) -> None:
        """Keep the namespace's finished runs ``seconds`` after they finish (0: forever)."""
        await self._writer.run(lambda conn, notes: conn.execute(
            "INSERT INTO namespace_settings (namespace, finished_retention) VALUES (?, ?)"
            " ON CONFLICT (namespace) DO UPDATE"
            " SET finished_retention = excluded.finished_retention",
            (namespace, float(seconds))))

    async def finished_retention(self, namespace: str) -> float:
        """How long the namespace keeps finished runs, in seconds (0: forever)."""
        return float(await self._writer.run(
            lambda conn, notes: retention_of(conn, namespace, self.finished_retention_default)))
