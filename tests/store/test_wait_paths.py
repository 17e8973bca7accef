"""The paths waited on (``wait_paths``) are pruned by the purge of expired events once no
wait uses them: an event of their type no longer probes them, and a wait that begins while
the purge runs keeps its path."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import pytest

from kenning.core.store import Store
from kenning.stores import postgres_sql as sql
from tests.conftest import FakeClock
from tests.store.conftest import NS, event, event_wait, start_claimed

CountRows = Callable[[str], int]


async def wait_for(store: Store, run_id: str, clock: FakeClock, type: str,
                   match: dict[str, Any] | None) -> None:
    """Create a run, claim it and suspend it on one event wait."""
    lease = await start_claimed(store, run_id)
    wait = event_wait(0, clock, type, match=match)
    result = await store.begin_waits(lease, [wait], next_ordinal=0)
    assert result.consumed is None


async def test_purge_drops_the_paths_no_wait_uses(store: Store, fake_clock: FakeClock,
                                                  count_rows: CountRows) -> None:
    await wait_for(store, "by-order", fake_clock, "a", {"data.order_id": "o1"})
    await wait_for(store, "by-subject", fake_clock, "a", {"subject": "s1"})
    await wait_for(store, "any-b", fake_clock, "b", None)
    assert count_rows("wait_paths") == 3
    [hit] = await store.accept_events(NS, [event("e1", "a", data={"order_id": "o1"})])
    assert hit.resumed_runs == ("by-order",)
    await store.cancel_run("any-b", "test")
    assert count_rows("wait_paths") == 3  # kept until the purge
    assert await store.purge_expired() == 0
    assert count_rows("wait_paths") == 1
    assert count_rows("wait_paths WHERE event_type = 'a' AND path = 'subject'") == 1
    assert await store.purge_expired() == 0
    assert count_rows("wait_paths") == 1  # a path in use stays
    # a wait on a pruned path records it again, and events find it by it
    await wait_for(store, "by-order-again", fake_clock, "a", {"data.order_id": "o2"})
    [again] = await store.accept_events(NS, [event("e2", "a", data={"order_id": "o2"})])
    assert again.resumed_runs == ("by-order-again",)
    [other] = await store.accept_events(NS, [event("e3", "a", subject="s1")])
    assert other.resumed_runs == ("by-subject",)


async def test_a_wait_beginning_during_the_purge_keeps_its_path(
        store: Store, fake_clock: FakeClock, count_rows: CountRows) -> None:
    for round in range(20):
        # the path is unused when the purge reads it, and begins to be used meanwhile (by
        # another value: the first run's event is kept, and would be taken at once)
        await wait_for(store, f"before-{round}", fake_clock, "t", {"data.k": round})
        [done] = await store.accept_events(NS, [event(f"b{round}", "t", data={"k": round})])
        assert done.resumed_runs == (f"before-{round}",)
        lease = await start_claimed(store, f"during-{round}")
        wait = event_wait(0, fake_clock, "t", match={"data.k": -round - 1})
        began, _ = await asyncio.gather(store.begin_waits(lease, [wait], next_ordinal=0),
                                        store.purge_expired())
        assert began.consumed is None
        [hit] = await store.accept_events(NS, [event(f"d{round}", "t", data={"k": -round - 1})])
        assert hit.resumed_runs == (f"during-{round}",), f"round {round}: the wait was missed"
    await store.purge_expired()
    assert count_rows("wait_paths") == 0


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_the_prune_waits_for_a_wait_of_its_type_to_commit(
        store: Store, fake_clock: FakeClock, count_rows: CountRows, pg_dsn: str) -> None:
    await wait_for(store, "first", fake_clock, "t", {"data.k": 1})
    await store.cancel_run("first", "test")  # its path is unused now
    # another process begins a wait on that path: it holds the type's lock, as a wait does,
    # and has written its keys (the path was there already) but not committed yet
    conn = await asyncpg.connect(pg_dsn)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute("SELECT pg_advisory_xact_lock($1)", sql.event_lock_key("t"))
        await conn.execute(
            "INSERT INTO wait_paths VALUES ($1, 't', 'data.k') ON CONFLICT DO NOTHING", NS)
        await conn.execute("INSERT INTO wait_keys VALUES ($1, 't', 'data.k', '2', 'other',"
                           " 0, 1)", NS)
        purge = asyncio.ensure_future(store.purge_expired())
        await asyncio.sleep(0.5)
        assert not purge.done(), "the prune did not wait for the type's lock"
        await tx.commit()
        await asyncio.wait_for(purge, 10)
    finally:
        await conn.close()
    assert count_rows("wait_paths WHERE event_type = 't' AND path = 'data.k'") == 1
