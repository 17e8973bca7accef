"""The store contract suite runs every test against SQLite and a real PostgreSQL.

``make_store()`` opens another store object on the test's database (another "process" for
PostgreSQL, another connection for SQLite); ``store`` is the first one. All use the test's
fake clock unless given another.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import pytest

from kenning.core.models import (
    TARGET_RUN_EXTENSION,
    ClaimedRun,
    CloudEventRecord,
    Lease,
    NewRun,
    Notification,
    Run,
    Step,
    StepKind,
    Wait,
    WaitKind,
)
from kenning.core.store import EventWaitResult, Store
from kenning.stores import postgres_schema, sqlite_schema
from kenning.stores.postgres import PostgresStore
from kenning.stores.sqlite import SqliteStore
from tests.conftest import FakeClock
from tests.pg_server import PgServer, pg_dsn, pg_server  # noqa: F401  (fixtures)

NS = "default"
EVENT_TYPE = "order.paid"


class StoreFactory(Protocol):
    """Opens a store on the test's database."""

    def __call__(self, *, clock: Callable[[], float] | None = ...,
                 open: bool = ..., **kwargs: Any) -> Awaitable[Store]: ...


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which store implementation the test runs against."""
    return str(request.param)


@pytest.fixture
async def make_store(backend: str, request: pytest.FixtureRequest, tmp_path: Path,
                     fake_clock: FakeClock) -> AsyncIterator[StoreFactory]:
    """A factory of stores on one database, all closed after the test."""
    dsn = request.getfixturevalue("pg_dsn") if backend == "postgres" else ""
    opened: list[Store] = []

    async def factory(*, clock: Callable[[], float] | None = None, open: bool = True,
                      **kwargs: Any) -> Store:
        store: Store
        if backend == "sqlite":
            store = SqliteStore(str(tmp_path / "kenning.db"), clock=clock or fake_clock, **kwargs)
        else:
            store = PostgresStore(dsn, clock=clock or fake_clock, **kwargs)
        opened.append(store)
        if open:
            await store.open()
        return store

    yield factory
    for store in reversed(opened):
        await store.close()


@pytest.fixture
async def store(make_store: StoreFactory) -> Store:
    """An open store on a fresh database."""
    return await make_store()


@pytest.fixture
def notes(store: Store) -> list[Notification]:
    """Every notification ``store`` dispatches during the test."""
    heard: list[Notification] = []
    store.subscribe(heard.append)
    return heard


# -- databases at an older schema, large loads --------------------------------------------
async def postgres_at_version(dsn: str, version: int, statements: list[str]) -> None:
    """Bring an empty PostgreSQL database to schema ``version`` and run ``statements``."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE kenning_schema (singleton boolean PRIMARY KEY"
                           " DEFAULT true CHECK (singleton), version integer NOT NULL)")
        for migration in postgres_schema.MIGRATIONS[:version]:
            await conn.execute(migration)
        await conn.execute("INSERT INTO kenning_schema VALUES (true, $1)", version)
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


def sqlite_at_version(path: Path, version: int, statements: list[str]) -> None:
    """Create a SQLite file at schema ``version`` and run ``statements``."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for migration in sqlite_schema.MIGRATIONS[:version]:
            conn.executescript(migration)
        conn.execute(f"PRAGMA user_version = {version}")
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


@contextlib.contextmanager
def loaded_database(server: PgServer, *load: str) -> Iterator[str]:
    """A database of its own on ``server``, migrated, then each of ``load`` run (one
    statement or a script each); dropped after."""
    name = server.create_database()
    dsn = server.dsn(name)

    async def migrate_and_load() -> None:
        store = PostgresStore(dsn)
        await store.open()
        await store.close()
        conn = await asyncpg.connect(dsn)
        try:
            for script in load:
                await conn.execute(script)
        finally:
            await conn.close()
    asyncio.run(migrate_and_load())
    try:
        yield dsn
    finally:
        server.drop_database(name)


# -- builders -----------------------------------------------------------------------------
def new_run(run_id: str, *, namespace: str = NS, workflow: str = "wf",
            input: str = "[]") -> NewRun:
    """A run to create."""
    return NewRun(run_id=run_id, namespace=namespace, workflow=workflow, input=input)


def step(seq: int, name: str = "act", value: str | None = "1", *, at: float = 0.0,
         kind: StepKind = StepKind.ACTIVITY, ordinal: int | None = None) -> Step:
    """A history entry."""
    return Step(seq=seq, kind=kind, name=name, value=value, recorded_at=at, ordinal=ordinal)


def event(id: str, type: str = EVENT_TYPE, *, data: Any = None, to_run: str | None = None,
          subject: str | None = None, source: str = "/test", **extensions: str
          ) -> CloudEventRecord:
    """A CloudEvent; ``to_run`` addresses it to one run (extension ``kenningrun``)."""
    ext = dict(extensions)
    if to_run is not None:
        ext[TARGET_RUN_EXTENSION] = to_run
    return CloudEventRecord(id=id, source=source, type=type, subject=subject,
                            data=None if data is None else json.dumps(data), extensions=ext)


def event_wait(seq: int, clock: Callable[[], float], type: str = EVENT_TYPE, *,
               match: dict[str, Any] | None = None, lookback: float | None = None,
               timeout: float | None = None) -> Wait:
    """An event wait beginning now."""
    now = clock()
    return Wait(seq=seq, kind=WaitKind.EVENT, event_type=type, match=match, lookback=lookback,
                started_at=now, wake_at=None if timeout is None else now + timeout)


async def wait_on(store: Store, lease: Lease, wait: Wait, steps: Sequence[Step] = ()
                  ) -> EventWaitResult:
    """``begin_waits`` on one wait, delivered at its own seq (``next_ordinal = seq``)."""
    return await store.begin_waits(lease, [wait], steps, next_ordinal=wait.seq)


def timer_wait(seq: int, wake_at: float) -> Wait:
    """A durable sleep until ``wake_at``."""
    return Wait(seq=seq, kind=WaitKind.TIMER, wake_at=wake_at)


async def claim_one(store: Store, run_id: str, worker: str = "w1",
                    lease_seconds: float = 30.0) -> ClaimedRun:
    """Claim exactly this run."""
    claimed = await store.claim_runs(worker, limit=10, lease_seconds=lease_seconds,
                                     run_ids=[run_id])
    assert [c.run.run_id for c in claimed] == [run_id]
    return claimed[0]


async def start_claimed(store: Store, run_id: str, worker: str = "w1", *,
                        namespace: str = NS, lease_seconds: float = 30.0) -> Lease:
    """Create a run and claim it; return the lease."""
    await store.create_run(new_run(run_id, namespace=namespace))
    return (await claim_one(store, run_id, worker, lease_seconds)).lease


async def start_waiting(store: Store, run_id: str, clock: Callable[[], float],
                        type: str = EVENT_TYPE, *, namespace: str = NS, seq: int = 0,
                        match: dict[str, Any] | None = None, timeout: float | None = None
                        ) -> Run:
    """Create a run, claim it and suspend it waiting for an event; return the run."""
    lease = await start_claimed(store, run_id, namespace=namespace)
    result = await wait_on(store, lease,
                           event_wait(seq, clock, type, match=match, timeout=timeout))
    assert result.consumed is None, "an event was already there"
    run = await store.get_run(run_id)
    assert run is not None
    return run


class Heard:
    """A listener that records notifications and lets a test await one."""

    def __init__(self) -> None:
        self.notes: list[Notification] = []
        self._changed = asyncio.Event()

    def __call__(self, note: Notification) -> None:
        self.notes.append(note)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[Notification], bool],
                       timeout: float = 10.0) -> Notification:
        """The first notification (heard or still to come) for which ``predicate`` holds."""
        async with asyncio.timeout(timeout):
            while True:
                for note in self.notes:
                    if predicate(note):
                        return note
                self._changed.clear()
                await self._changed.wait()


@pytest.fixture
def read_status(backend: str, request: pytest.FixtureRequest,
                tmp_path: Path) -> Callable[[str], str | None]:
    """Read a run's committed status synchronously on a connection of its own (to check
    from inside a listener that a change was committed before it was announced)."""
    if backend == "sqlite":
        def from_sqlite(run_id: str) -> str | None:
            with contextlib.closing(sqlite3.connect(tmp_path / "kenning.db")) as conn:
                row = conn.execute("SELECT status FROM runs WHERE run_id = ?",
                                   (run_id,)).fetchone()
            return None if row is None else str(row[0])
        return from_sqlite
    server: PgServer = request.getfixturevalue("pg_server")
    database = str(request.getfixturevalue("pg_dsn")).rsplit("/", 1)[1]

    def from_postgres(run_id: str) -> str | None:
        out = server.psql(f"SELECT status FROM runs WHERE run_id = '{run_id}'", database)
        return out.strip() or None
    return from_postgres


@pytest.fixture
def count_rows(backend: str, request: pytest.FixtureRequest,
               tmp_path: Path) -> Callable[[str], int]:
    """Count the rows of a table on a connection of its own (``table`` may carry a WHERE)."""
    if backend == "sqlite":
        def from_sqlite(table: str) -> int:
            with contextlib.closing(sqlite3.connect(tmp_path / "kenning.db")) as conn:
                return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        return from_sqlite
    server: PgServer = request.getfixturevalue("pg_server")
    database = str(request.getfixturevalue("pg_dsn")).rsplit("/", 1)[1]

    def from_postgres(table: str) -> int:
        return int(server.psql(f"SELECT count(*) FROM {table}", database).strip())
    return from_postgres
