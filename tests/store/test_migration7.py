"""Migration 7 (several waits, ordinals, child runs, chapters) on a database at version 6 that
holds runs: a run waiting on the single wait of the old columns reads back as its only wait,
is still found by its wait keys, and resumes; the old history has no ordinals."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import asyncpg

from kenning.core.models import RunStatus, StepKind, Wait, WaitKind
from kenning.core.store import Store
from kenning.stores import postgres_schema, sqlite_schema
from kenning.stores.postgres import PostgresStore
from kenning.stores.sqlite import SqliteStore
from tests.conftest import FakeClock
from tests.pg_server import pg_dsn, pg_server  # noqa: F401  (fixtures)
from tests.store.conftest import NS, event, postgres_at_version, sqlite_at_version

T0 = 1_700_000_000.0
# a run waiting for order.paid of order A (deadline T0 + 3600), one sleeping, one finished
_V6_DATA = [
    "INSERT INTO runs (run_id, namespace, workflow, input, status, created_at, epoch,"
    " wait_seq, wait_kind, wake_at, wait_type, wait_match, wait_started)"
    f" VALUES ('waiting', 'default', 'wf', '[]', 'waiting_for_event', {T0}, 3, 2, 'event',"
    f" {T0 + 3600}, 'order.paid', '{{\"data.order_id\": \"A\"}}', {T0})",
    "INSERT INTO runs (run_id, namespace, workflow, input, status, created_at, epoch,"
    " wait_seq, wait_kind, wake_at)"
    f" VALUES ('sleeping', 'default', 'wf', '[]', 'waiting_for_timer', {T0}, 1, 0, 'timer',"
    f" {T0 + 60})",
    "INSERT INTO runs (run_id, namespace, workflow, input, status, created_at, result,"
    f" finished_at) VALUES ('done', 'default', 'wf', '[]', 'completed', {T0}, '1', {T0})",
    "INSERT INTO history (run_id, seq, kind, name, value, recorded_at) VALUES"
    f" ('waiting', 0, 'activity', 'a', '1', {T0}), ('waiting', 1, 'activity', 'b', '2', {T0})",
    "INSERT INTO wait_keys (namespace, event_type, path, value, run_id, seq, nkeys)"
    " VALUES ('default', 'order.paid', 'data.order_id', '\"A\"', 'waiting', 2, 1)",
    "INSERT INTO wait_paths (namespace, event_type, path)"
    " VALUES ('default', 'order.paid', 'data.order_id')",
]
OLD_WAIT = Wait(seq=2, kind=WaitKind.EVENT, wake_at=T0 + 3600, event_type="order.paid",
                match={"data.order_id": "A"}, started_at=T0)


async def _check_migrated(store: Store, clock: FakeClock) -> None:
    waiting = await store.get_run("waiting")
    assert waiting is not None
    assert waiting.waits == (OLD_WAIT,) and waiting.wait == OLD_WAIT
    assert (waiting.wait_ordinal, waiting.parent_run_id, waiting.chapter) == (None, None, 0)
    sleeping = await store.get_run("sleeping")
    assert sleeping is not None
    assert sleeping.waits == (Wait(seq=0, kind=WaitKind.TIMER, wake_at=T0 + 60),)
    assert [(s.seq, s.ordinal) for s in await store.load_history("waiting")] == [(0, None),
                                                                               (1, None)]
    assert await store.list_chapters("done") == []
    [miss] = await store.accept_events(NS, [event("e0", "order.paid", data={"order_id": "B"})])
    [hit] = await store.accept_events(NS, [event("e1", "order.paid", data={"order_id": "A"})])
    assert (miss.resumed_runs, hit.resumed_runs) == ((), ("waiting",))
    resumed = await store.get_run("waiting")
    assert resumed is not None and resumed.status is RunStatus.PENDING
    recorded = (await store.load_history("waiting"))[-1]
    assert (recorded.seq, recorded.kind, recorded.name, recorded.ordinal) == (
        2, StepKind.EVENT, "order.paid", None)
    assert await store.next_wake_at() == T0 + 60


async def test_postgres_migration_7_keeps_waiting_runs(pg_dsn: str) -> None:  # noqa: F811
    await postgres_at_version(pg_dsn, 6, _V6_DATA)
    clock = FakeClock(T0 + 10)
    store = PostgresStore(pg_dsn, clock=clock)
    await store.open()
    try:
        await _check_migrated(store, clock)
    finally:
        await store.close()
    conn = await asyncpg.connect(pg_dsn)
    try:
        version = await conn.fetchval("SELECT version FROM kenning_schema")
        assert version == postgres_schema.SCHEMA_VERSION
        # the key of wait_keys takes the seq: two waits of a run may share their keys
        await conn.execute(
            "INSERT INTO wait_keys (namespace, event_type, path, value, run_id, seq, nkeys)"
            " VALUES ('default', 't', '', '', 'x', 1, 1), ('default', 't', '', '', 'x', 2, 1)")
    finally:
        await conn.close()


async def test_sqlite_migration_7_keeps_waiting_runs(tmp_path: Path) -> None:
    path = tmp_path / "v6.db"
    sqlite_at_version(path, 6, _V6_DATA)
    clock = FakeClock(T0 + 10)
    store = SqliteStore(str(path), clock=clock)
    await store.open()
    try:
        await _check_migrated(store, clock)
    finally:
        await store.close()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_schema.SCHEMA_VERSION
        conn.execute(
            "INSERT INTO wait_keys (namespace, event_type, path, value, run_id, seq, nkeys)"
            " VALUES ('default', 't', '', '', 'x', 1, 1), ('default', 't', '', '', 'x', 2, 1)")
        triggers = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        assert triggers == {"runs_stop_waiting", "runs_deleted_waiting"}
        indexes = {row[0] for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'wait_keys'")}
        assert "wait_keys_run" in indexes
        # the trigger still drops a run's keys when it stops waiting
        conn.execute("UPDATE runs SET status = 'waiting_for_event' WHERE run_id = 'done'")
        conn.execute("INSERT INTO wait_keys VALUES ('default', 't', '', '', 'done', 0, 1)")
        conn.execute("UPDATE runs SET status = 'cancelled' WHERE run_id = 'done'")
        assert conn.execute("SELECT count(*) FROM wait_keys WHERE run_id = 'done'"
                            ).fetchone()[0] == 0
    finally:
        conn.close()
