"""Retention of finished runs on PostgreSQL: delete old finished runs with their history.

Each call deletes at most a small batch, in a statement of its own on a pooled connection
(not in a group commit, so hot writes never wait behind it). Only runs whose status is
final are touched; they are locked ``SKIP LOCKED``, so a purge never waits on a hot row.
A purged run takes its closed chapters and its inbox (events addressed to it) along; the
closed chapters of any run (continue-as-new) go after the same period.
"""

from __future__ import annotations

from typing import Any

from kenning.stores.postgres_base import PostgresBase
from kenning.stores.rows import retention_cutoff

FINISHED = "status IN ('completed', 'failed', 'cancelled')"

# The namespaces that have finished runs: one index probe each (a loose index scan).
NAMESPACES = (
    "WITH RECURSIVE ns AS ("
    f" (SELECT namespace FROM runs WHERE {FINISHED} ORDER BY namespace LIMIT 1)"
    " UNION ALL SELECT (SELECT r.namespace FROM runs r"
    f" WHERE r.{FINISHED} AND r.namespace > ns.namespace ORDER BY r.namespace LIMIT 1)"
    " FROM ns WHERE ns.namespace IS NOT NULL)"
    " SELECT namespace FROM ns WHERE namespace IS NOT NULL"
)
RETENTIONS = "SELECT namespace, finished_retention FROM namespace_settings"
RETENTION_OF = "SELECT finished_retention FROM namespace_settings WHERE namespace = $1"
SET_RETENTION = (
    "INSERT INTO namespace_settings (namespace, finished_retention) VALUES ($1, $2)"
    " ON CONFLICT (namespace) DO UPDATE SET finished_retention = EXCLUDED.finished_retention"
)
# Up to $3 runs of namespace $1 finished before $2, oldest first, with their history and
# consumption marks.
PURGE_RUNS = (
    "WITH d AS (DELETE FROM runs WHERE run_id IN (SELECT run_id FROM runs"
    f" WHERE namespace = $1 AND {FINISHED} AND finished_at < $2"
    f" ORDER BY finished_at LIMIT $3 FOR UPDATE SKIP LOCKED) AND {FINISHED} RETURNING run_id),"
    " h AS (DELETE FROM history WHERE run_id = ANY(ARRAY(SELECT run_id FROM d))),"
    " c AS (DELETE FROM consumptions WHERE run_id = ANY(ARRAY(SELECT run_id FROM d))),"
    " ch AS (DELETE FROM chapters WHERE run_id = ANY(ARRAY(SELECT run_id FROM d))),"
    " hc AS (DELETE FROM history_chapters WHERE run_id = ANY(ARRAY(SELECT run_id FROM d))),"
    " e AS (DELETE FROM events WHERE target_run = ANY(ARRAY(SELECT run_id FROM d)))"
    " SELECT count(*) FROM d"
)
# The namespaces that have closed chapters (a loose index scan, as NAMESPACES).
CHAPTER_NAMESPACES = (
    "WITH RECURSIVE ns AS ("
    " (SELECT namespace FROM chapters ORDER BY namespace LIMIT 1)"
    " UNION ALL SELECT (SELECT c.namespace FROM chapters c WHERE c.namespace > ns.namespace"
    " ORDER BY c.namespace LIMIT 1) FROM ns WHERE ns.namespace IS NOT NULL)"
    " SELECT namespace FROM ns WHERE namespace IS NOT NULL"
)
# Up to $3 closed chapters of namespace $1 closed before $2, oldest first, with their steps.
PURGE_CHAPTERS = (
    "WITH d AS (DELETE FROM chapters WHERE ctid = ANY(ARRAY(SELECT ctid FROM chapters"
    " WHERE namespace = $1 AND closed_at < $2 ORDER BY closed_at LIMIT $3"
    " FOR UPDATE SKIP LOCKED)) RETURNING run_id, chapter),"
    " h AS (DELETE FROM history_chapters x USING d"
    " WHERE x.run_id = d.run_id AND x.chapter = d.chapter)"
    " SELECT count(*) FROM d"
)


async def purge_batch(conn: Any, now: float, default_retention: float, before: float | None,
                      namespace: str | None, limit: int) -> int:
    """Delete up to ``limit`` finished runs (see ``Store.purge_finished``), and up to
    ``limit`` closed chapters as old; how many runs."""
    settings = {row["namespace"]: float(row["finished_retention"])
                for row in await conn.fetch(RETENTIONS)}

    def cutoff(space: str) -> float | None:
        return retention_cutoff(settings, space, default_retention, before, now)

    purged = 0
    spaces = [namespace] if namespace is not None else [
        row["namespace"] for row in await conn.fetch(NAMESPACES)]
    for space in spaces:
        until = cutoff(space)
        if until is None:
            continue
        purged += int(await conn.fetchval(PURGE_RUNS, space, until, limit - purged))
        if purged >= limit:
            break
    dropped = 0
    spaces = [namespace] if namespace is not None else [
        row["namespace"] for row in await conn.fetch(CHAPTER_NAMESPACES)]
    for space in spaces:
        until = cutoff(space)
        if until is None:
            continue
        dropped += int(await conn.fetchval(PURGE_CHAPTERS, space, until, limit - dropped))
        if dropped >= limit:
            break
    return purged


class PostgresRetention(PostgresBase):
    """The retention methods of ``PostgresStore``."""

    async def purge_finished(self, *, before: float | None = None,
                             namespace: str | None = None, limit: int = 500) -> int:
        """Delete a batch of finished runs with their history (statements of their own,
        outside the group commit; rows locked ``SKIP LOCKED``)."""
        return await self._read(lambda conn: purge_batch(
            conn, self._now(), self.finished_retention_default, before, namespace, limit))

    async def set_finished_retention(self, namespace: str, seconds: float) -> None:
        """Keep the namespace's finished runs ``seconds`` after they finish (0: forever)."""
        await self._read(lambda conn: conn.execute(SET_RETENTION, namespace, float(seconds)))

    async def finished_retention(self, namespace: str) -> float:
        """How long the namespace keeps finished runs, in seconds (0: forever)."""
        value = await self._read(lambda conn: conn.fetchval(RETENTION_OF, namespace))
        return self.finished_retention_default if value is None else float(value)
