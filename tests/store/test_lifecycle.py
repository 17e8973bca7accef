"""Opening (and migrating), pinging and closing a store."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from kenning.core.errors import SchemaTooNew, StoreUnavailable
from kenning.core.store import Store
from tests.store.conftest import StoreFactory, new_run


async def test_ping_and_close(store: Store) -> None:
    await store.ping()
    await store.create_run(new_run("r1"))
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.ping()
    with pytest.raises(StoreUnavailable):
        await store.create_run(new_run("r2"))


async def test_data_outlives_the_store_object(make_store: StoreFactory) -> None:
    first = await make_store()
    await first.create_run(new_run("r1"))
    await first.close()
    second = await make_store()
    run = await second.get_run("r1")
    assert run is not None and run.run_id == "r1"


async def test_stores_opened_together_migrate_once(make_store: StoreFactory) -> None:
    stores = await asyncio.gather(*(make_store() for _ in range(5)))
    await stores[0].create_run(new_run("r1"))
    for store in stores:
        assert await store.get_run("r1") is not None


async def test_schema_of_a_newer_kenning_is_refused(make_store: StoreFactory, backend: str,
                                                    request: pytest.FixtureRequest,
                                                    tmp_path: Path) -> None:
    await (await make_store()).close()
    if backend == "sqlite":
        with contextlib.closing(sqlite3.connect(tmp_path / "kenning.db")) as db:
            db.execute("PRAGMA user_version = 999")
    else:
        conn = await asyncpg.connect(request.getfixturevalue("pg_dsn"))
        try:
            await conn.execute("UPDATE kenning_schema SET version = 999")
        finally:
            await conn.close()
    with pytest.raises(SchemaTooNew, match="999"):
        await make_store()
