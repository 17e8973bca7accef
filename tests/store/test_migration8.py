"""Migration 8 on a database at version 7 that holds runs: the index of waiting runs by type
is gone (matching reads the wait keys), PostgreSQL gains the covering index of the
operator's counts, and the runs are counted and resumed as before."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg

from kenning.core.models import BuildCount
from kenning.core.store import Store
from kenning.stores.postgres import PostgresStore
from kenning.stores.sqlite import SqliteStore
from tests.conftest import FakeClock
from tests.pg_server import pg_dsn, pg_server  # noqa: F401  (fixtures)
from tests.store.conftest import NS, event, postgres_at_version, sqlite_at_version

T0 = 1_700_000_000.0
_V7_DATA = [
    "INSERT INTO runs (run_id, namespace, workflow, input, status, created_at, epoch,"
    " wait_seq, wait_kind, wait_type, wait_match, wait_started, build_id)"
    f" VALUES ('waiting', 'default', 'wf', '[]', 'waiting_for_event', {T0}, 1, 0, 'event',"
    f" 'order.paid', '{{\"data.order_id\": \"A\"}}', {T0}, 'v1')",
    "INSERT INTO runs (run_id, namespace, workflow, input, status, created_at, build_id)"
    f" VALUES ('pending', 'default', 'wf', '[]', 'pending', {T0}, 'v1')",
    "INSERT INTO runs (run_id, namespace, workflow, input, status, created_at, result,"
    f" finished_at) VALUES ('done', 'default', 'wf', '[]', 'completed', {T0}, '1', {T0})",
    "INSERT INTO wait_keys (namespace, event_type, path, value, run_id, seq, nkeys)"
    " VALUES ('default', 'order.paid', 'data.order_id', '\"A\"', 'waiting', 0, 1)",
    "INSERT INTO wait_paths (namespace, event_type, path)"
    " VALUES ('default', 'order.paid', 'data.order_id')",
]


async def _check_migrated(store: Store) -> None:
    assert await store.count_unfinished_by_build() == [
        BuildCount(NS, None, "wf", "v1", "pinned", unfinished=2, runnable=1)]
    [hit] = await store.accept_events(NS, [event("e1", "order.paid", data={"order_id": "A"})])
    assert hit.resumed_runs == ("waiting",)


async def test_postgres_migration_8(pg_dsn: str) -> None:  # noqa: F811
    await postgres_at_version(pg_dsn, 7, _V7_DATA)
    store = PostgresStore(pg_dsn, clock=FakeClock(T0 + 10))
    await store.open()
    try:
        await _check_migrated(store)
    finally:
        await store.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        assert await conn.fetchval("SELECT version FROM kenning_schema") == 8
        indexes = {row[0]: row[1] for row in await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'runs'")}
        assert "runs_waiting_type" not in indexes
        assert "(status, namespace, pool, workflow, build_id, upgrade) INCLUDE (wake_at)" \
            in indexes["runs_unfinished_counts"]
    finally:
        await conn.close()


async def test_sqlite_migration_8(tmp_path: Path) -> None:
    path = tmp_path / "v7.db"
    sqlite_at_version(path, 7, _V7_DATA)
    store = SqliteStore(str(path), clock=FakeClock(T0 + 10))
    await store.open()
    try:
        await _check_migrated(store)
    finally:
        await store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 8
        indexes = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'runs'")}
        assert "runs_waiting_type" not in indexes and "runs_due" in indexes
    finally:
        conn.close()
