"""What only PostgreSQL does: other processes, migrations, outages and LISTEN/NOTIFY."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from kenning.core.errors import StoreUnavailable
from kenning.core.models import Notification, NotificationKind
from kenning.stores import open_store
from kenning.stores.postgres import PostgresStore
from kenning.stores.postgres_listen import parse_payload
from kenning.stores.postgres_schema import SCHEMA_VERSION
from kenning.stores.postgres_writer import notify_payload
from tests.conftest import FakeClock
from tests.pg_server import PASSWORD, PASSWORD_USER, PgServer
from tests.store.conftest import NS, Heard, event, new_run, start_claimed, timer_wait, wait_on


@pytest.fixture
async def stores(pg_dsn: str, fake_clock: FakeClock) -> AsyncIterator[list[PostgresStore]]:
    """Two stores on one database, as two processes would have."""
    opened = [PostgresStore(pg_dsn, clock=fake_clock) for _ in range(2)]
    try:
        for store in opened:
            await store.open()
        yield opened
    finally:
        for store in opened:
            await store.close()


def is_note(kind: NotificationKind, run_id: str | None) -> Callable[[Notification], bool]:
    """A predicate for ``Heard.wait_for``."""
    return lambda note: note.kind is kind and note.run_id == run_id


async def test_other_processes_changes_arrive_through_listen(
        stores: list[PostgresStore], fake_clock: FakeClock) -> None:
    here, there = stores
    heard = Heard()
    here.subscribe(heard)
    await there.create_run(new_run("r1"))
    await heard.wait_for(is_note(NotificationKind.RUNNABLE, "r1"))
    lease = await start_claimed(there, "r2")
    wake = fake_clock() + 12.345678
    await wait_on(there, lease, timer_wait(0, wake))
    timer = await heard.wait_for(is_note(NotificationKind.TIMER, "r2"))
    assert timer.wake_at == wake
    await there.cancel_run("r1", "stop")
    await heard.wait_for(is_note(NotificationKind.CANCELLED, "r1"))
    await heard.wait_for(is_note(NotificationKind.FINISHED, "r1"))


async def test_own_notifications_are_not_heard_twice(stores: list[PostgresStore]) -> None:
    here, there = stores
    heard = Heard()
    here.subscribe(heard)
    await here.create_run(new_run("mine"))
    await there.create_run(new_run("theirs"))  # NOTIFYs arrive in commit order
    await heard.wait_for(is_note(NotificationKind.RUNNABLE, "theirs"))
    assert [n.run_id for n in heard.notes] == ["mine", "theirs"]


async def test_concurrent_open_migrates_once(pg_dsn: str) -> None:
    stores = [PostgresStore(pg_dsn) for _ in range(6)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        conn = await asyncpg.connect(pg_dsn)
        try:
            assert await conn.fetchval("SELECT version FROM kenning_schema") == SCHEMA_VERSION
            assert await conn.fetchval("SELECT count(*) FROM kenning_schema") == 1
        finally:
            await conn.close()
        await stores[0].create_run(new_run("r1"))
        assert await stores[5].get_run("r1") is not None
    finally:
        for store in stores:
            await store.close()


async def test_open_store_routes_postgres_urls(pg_dsn: str) -> None:
    store = open_store(pg_dsn)
    assert isinstance(store, PostgresStore)
    await store.open()
    try:
        await store.ping()
    finally:
        await store.close()


@pytest.mark.parametrize("case", ["refused", "password", "database"])
async def test_unreachable_database_says_why(pg_server: PgServer, case: str) -> None:
    if case == "refused":
        dsn, why = "postgresql://postgres@127.0.0.1:1/x", "connection refused"
    elif case == "password":
        dsn = pg_server.dsn("postgres", PASSWORD_USER, "Xq9z-not-it")
        why = "authentication failed"
    else:
        dsn, why = pg_server.dsn("no_such_database"), "does not exist"
    store = PostgresStore(dsn, connect_timeout=5)
    with pytest.raises(StoreUnavailable) as info:
        await store.open()
    message = str(info.value)
    assert why in message and "\n" not in message
    assert "Xq9z" not in message  # never the password
    with pytest.raises(StoreUnavailable):
        await store.ping()
    await store.close()


async def test_right_password_connects(pg_server: PgServer) -> None:
    database = pg_server.create_database()
    try:
        pg_server.psql(f"ALTER DATABASE {database} OWNER TO {PASSWORD_USER}")
        store = PostgresStore(pg_server.dsn(database, PASSWORD_USER, PASSWORD))
        await store.open()
        try:
            await store.create_run(new_run("r1"))
        finally:
            await store.close()
    finally:
        pg_server.drop_database(database)


async def test_recovers_when_its_connections_are_killed(stores: list[PostgresStore],
                                                        pg_dsn: str) -> None:
    here, there = stores
    heard = Heard()
    here.subscribe(heard)
    await here.create_run(new_run("before"))
    await here.accept_events(NS, [event("e0")])
    admin = await asyncpg.connect(pg_dsn)
    try:
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()")
    finally:
        await admin.close()
    assert killed >= 4  # both stores' writers and listeners
    assert await here.get_run("before") is not None
    [result] = await here.accept_events(NS, [event("e1")])
    assert result.outcome.value == "accepted"
    await heard.wait_for(is_note(NotificationKind.RUNNABLE, None))  # "look for work"
    await there.create_run(new_run("after"))
    await heard.wait_for(is_note(NotificationKind.RUNNABLE, "after"))


async def test_outage_answers_unavailable_then_recovers(fake_clock: FakeClock) -> None:
    server = PgServer()
    try:
        await asyncio.to_thread(server.start)
        store = PostgresStore(server.dsn("postgres"), clock=fake_clock, connect_timeout=3)
        await store.open()
        try:
            heard = Heard()
            store.subscribe(heard)
            await store.create_run(new_run("r1"))
            await asyncio.to_thread(server.pg_ctl_stop, "fast")
            with pytest.raises(StoreUnavailable):
                await store.accept_events(NS, [event("e1")])
            with pytest.raises(StoreUnavailable):
                await store.get_run("r1")
            with pytest.raises(StoreUnavailable):
                await store.ping()
            await asyncio.to_thread(server.pg_ctl_start)
            await store.ping()
            [result] = await store.accept_events(NS, [event("e1")])
            assert result.outcome.value == "accepted"
            assert await store.get_run("r1") is not None
            await heard.wait_for(is_note(NotificationKind.RUNNABLE, None), timeout=15)
        finally:
            await store.close()
    finally:
        await asyncio.to_thread(server.stop)


def test_notification_payloads_round_trip() -> None:
    for note in (Notification(NotificationKind.RUNNABLE, "r|1"),
                 Notification(NotificationKind.TIMER, "r2", 1700000000.123456),
                 Notification(NotificationKind.OUTBOX)):
        assert parse_payload(notify_payload(note)) == note
    for foreign in ("", "hello", "bogus|r1|", "timer|r1|soon"):
        assert parse_payload(foreign) is None
