"""Plans of the tenancy queries (PostgreSQL): the count of unfinished runs by build reads the
unfinished runs through an index, not the finished ones; the scoped claim still starts
from the indexes of runnable runs. The tenancy migration on both stores keeps events and dedups
them per namespace."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from kenning.core.models import ClaimScope
from kenning.stores import postgres_sql as sql
from kenning.stores import sqlite_schema
from kenning.stores.claim_scope import postgres_scope_args
from kenning.stores.postgres import PostgresStore
from kenning.stores.postgres_schema import MIGRATIONS, migrate
from tests.pg_server import PgServer, pg_dsn, pg_server  # noqa: F401  (fixtures)


async def _plan(conn: asyncpg.Connection, query: str, *args: object) -> str:
    rows = await conn.fetch(f"EXPLAIN (FORMAT JSON) {query}", *args)
    return json.dumps(json.loads(rows[0][0]))


async def test_plans_use_the_indexes_of_unfinished_and_runnable_runs(pg_dsn: str) -> None:  # noqa: F811
    store = PostgresStore(pg_dsn)
    await store.open()
    await store.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(
            "INSERT INTO runs (run_id, namespace, workflow, input, status, created_at)"
            " SELECT 'f' || i, 'ns' || (i % 7), 'wf', '[]', 'completed', i"
            " FROM generate_series(1, 20000) i")
        await conn.execute(
            "INSERT INTO runs (run_id, namespace, workflow, input, status, created_at, build_id)"
            " SELECT 'u' || i, 'ns' || (i % 7), 'wf', '[]', 'waiting_for_event', i, 'v1'"
            " FROM generate_series(1, 50) i")
        await conn.execute("ANALYZE runs")
        count_plan = await _plan(conn, sql.UNFINISHED_BY_BUILD, 0.0)
        assert any(f'"{node}"' in count_plan for node in (
            "Index Only Scan", "Index Scan", "Bitmap Index Scan")), count_plan
        assert '"Seq Scan"' not in count_plan, count_plan
        claim = sql.claim(workflows=True, run_ids=False, reclaim=False, scoped=True)
        claim_plan = await _plan(conn, claim, "w", 1.0, 0.0, 10, ["wf"],
                                 *postgres_scope_args(ClaimScope(("ns1",), "p", "v1")))
        assert '"Seq Scan"' not in claim_plan, claim_plan
    finally:
        await conn.close()


async def test_tenancy_migration_keeps_events_and_dedups_per_namespace(pg_dsn: str) -> None:  # noqa: F811
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("CREATE TABLE kenning_schema (singleton boolean PRIMARY KEY"
                           " DEFAULT true CHECK (singleton), version integer NOT NULL)")
        await conn.execute(MIGRATIONS[0])
        await conn.execute("INSERT INTO kenning_schema VALUES (true, 1)")
        await conn.execute(
            "INSERT INTO events (namespace, source, id, type, record, received_at, expires_at)"
            " VALUES ('a', '/s', 'e1', 't', '{}', 1, 2)")
        await conn.execute(
            "INSERT INTO runs (run_id, namespace, workflow, input, status, created_at)"
            " VALUES ('old', 'a', 'wf', '[]', 'pending', 1)")
        assert await migrate(conn) == 1
        await conn.execute(
            "INSERT INTO events (namespace, source, id, type, record, received_at, expires_at)"
            " VALUES ('b', '/s', 'e1', 't', '{}', 1, 2)")
        assert await conn.fetchval("SELECT count(*) FROM events") == 2
        row = await conn.fetchrow("SELECT build_id, upgrade FROM runs WHERE run_id = 'old'")
        assert (row["build_id"], row["upgrade"]) == (None, "pinned")
    finally:
        await conn.close()


def test_sqlite_tenancy_migration_keeps_events_and_dedups_per_namespace(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "old.db", isolation_level=None)
    try:
        conn.executescript(sqlite_schema.MIGRATIONS[0])
        conn.execute("PRAGMA user_version = 1")
        conn.execute("INSERT INTO events (namespace, source, id, type, record, received_at,"
                     " expires_at) VALUES ('a', '/s', 'e1', 't', '{}', 1, 2)")
        sqlite_schema.migrate(conn)
        assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_schema.SCHEMA_VERSION
        conn.execute("INSERT INTO events (namespace, source, id, type, record, received_at,"
                     " expires_at) VALUES ('b', '/s', 'e1', 't', '{}', 1, 2)")
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute("INSERT INTO events (namespace, source, id, type, record,"
                         " received_at, expires_at) VALUES ('b', '/s', 'e1', 't', '{}', 1, 2)")
        assert [r[0] for r in conn.execute("SELECT namespace FROM events ORDER BY pk")] == [
            "a", "b"]
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE"
                                              " type = 'index' AND tbl_name = 'events'")}
        assert {"events_kept", "events_inbox", "events_expiry"} <= indexes
    finally:
        conn.close()
