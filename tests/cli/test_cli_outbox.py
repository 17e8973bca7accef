"""``kenning outbox list [--dead]`` and ``kenning outbox retry PK|--all-dead``."""

from __future__ import annotations

import asyncio
import json

from kenning.stores.sqlite import SqliteStore
from tests.store.conftest import event, start_claimed, step

from .conftest import Invoke


async def _seed(database: str) -> list[int]:
    store = SqliteStore(database)
    await store.open()
    try:
        lease = await start_claimed(store, "r-out")
        await store.append_steps(lease, [step(0, "e")],
                                 [event(f"e{i}", "order.sent") for i in range(3)])
        entries = await store.due_outbox(10)
        for entry in entries[:2]:
            await store.outbox_dead(entry.pk, f"http://broker answered 400: no {entry.pk}")
        return [e.pk for e in entries]
    finally:
        await store.close()


def test_dead_entries_are_listed_and_retried_by_hand(cli: Invoke, db_path: str) -> None:
    first, second, live = asyncio.run(_seed(db_path))
    listed = cli("outbox", "list", "--dead", "--database", db_path)
    assert listed.exit_code == 0, listed.output
    assert "answered 400" in listed.output and "r-out" in listed.output
    doc = json.loads(cli("outbox", "list", "--dead", "-o", "json", "--database", db_path).output)
    assert [e["pk"] for e in doc] == [first, second] and doc[0]["dead_at"].endswith("Z")
    doc = json.loads(cli("outbox", "list", "-o", "json", "--database", db_path).output)
    assert [e["pk"] for e in doc] == [live]

    retried = cli("outbox", "retry", str(first), "--database", db_path)
    assert retried.exit_code == 0 and "1 dead entry will be published again" in retried.output
    again = cli("outbox", "retry", str(first), "--database", db_path)
    assert again.exit_code == 1 and "not dead entries" in again.output
    both = cli("outbox", "retry", str(second), "--all-dead", "--database", db_path)
    assert both.exit_code == 2
    everything = cli("outbox", "retry", "--all-dead", "--database", db_path)
    assert everything.exit_code == 0 and "1 dead entry" in everything.output
    empty = cli("outbox", "list", "--dead", "--database", db_path)
    assert empty.exit_code == 0 and "no dead outbox entries" in empty.output
