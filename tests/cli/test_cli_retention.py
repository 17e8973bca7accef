"""``kenning runs purge`` and ``kenning runs retention`` against a SQLite file."""

from __future__ import annotations

import asyncio
import time

from kenning.core.models import RunStatus
from kenning.stores import open_store
from tests.store.conftest import new_run

from .conftest import Invoke

DAY = 86_400.0


def seed(database: str) -> None:
    """Runs finished 10 and 2 days ago in two namespaces, and one still pending."""
    async def go() -> None:
        for namespace, days in (("default", 10), ("default", 2), ("other", 10)):
            store = open_store(database, clock=lambda d=days: time.time() - d * DAY)
            await store.open()
            try:
                run_id = f"{namespace}-{days}"
                await store.create_run(new_run(run_id, namespace=namespace))
                await store.cancel_run(run_id, "old")
            finally:
                await store.close()
        store = open_store(database)
        await store.open()
        await store.create_run(new_run("pending"))
        await store.close()
    asyncio.run(go())


def remaining(database: str) -> dict[str, RunStatus]:
    """Every run left, with its status."""
    async def go() -> dict[str, RunStatus]:
        store = open_store(database)
        await store.open()
        try:
            return {r.run_id: r.status for r in await store.list_runs(limit=100)}
        finally:
            await store.close()
    return asyncio.run(go())


def test_runs_purge_finished_before(cli: Invoke, db_path: str) -> None:
    seed(db_path)
    five_days_ago = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 5 * DAY))
    result = cli("runs", "purge", "--finished-before", five_days_ago, "--database", db_path)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "purged 1 finished runs"
    assert sorted(remaining(db_path)) == ["default-2", "other-10", "pending"]
    everywhere = cli("runs", "purge", "--finished-before", "2999-01-01T00:00:00+00:00", "-A",
                     "--database", db_path)
    assert everywhere.stdout.strip() == "purged 2 finished runs"
    assert remaining(db_path) == {"pending": RunStatus.PENDING}
    bad = cli("runs", "purge", "--finished-before", "last week", "--database", db_path)
    assert bad.exit_code != 0 and "not an ISO date" in bad.output


def test_runs_retention_shows_and_sets(cli: Invoke, db_path: str) -> None:
    seed(db_path)
    shown = cli("runs", "retention", "--database", db_path)
    assert shown.stdout.strip() == "namespace 'default' keeps finished runs 30 days"
    changed = cli("runs", "retention", "--days", "0", "-n", "other", "--database", db_path)
    assert changed.stdout.strip() == "namespace 'other' keeps finished runs forever"
    short = cli("runs", "retention", "--days", "1.5", "--database", db_path)
    assert short.stdout.strip() == "namespace 'default' keeps finished runs 1.5 days"
    assert cli("runs", "retention", "-n", "other", "--database", db_path).stdout.strip() \
        == "namespace 'other' keeps finished runs forever"

    async def purge() -> int:
        store = open_store(db_path)
        await store.open()
        try:
            return await store.purge_finished()
        finally:
            await store.close()
    assert asyncio.run(purge()) == 2  # both of default's; other keeps its runs forever
    assert sorted(remaining(db_path)) == ["other-10", "pending"]
