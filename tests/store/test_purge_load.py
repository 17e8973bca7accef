"""A purge of many finished runs under load (PostgreSQL): no event lost, no claim held up."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from kenning.core.models import RunStatus
from kenning.runtime.retention import purge_finished_runs
from kenning.stores.postgres import PostgresStore
from tests.store.conftest import NS, event, new_run, start_waiting

FINISHED = 20_000
WAITING = 150


async def test_purge_under_load_loses_nothing_and_blocks_no_claim(pg_dsn: str) -> None:
    clock = time.time
    store = PostgresStore(pg_dsn, clock=clock)
    await store.open()
    try:
        conn = await asyncpg.connect(pg_dsn)
        old = clock() - 40 * 86_400
        await conn.execute(f"""
            INSERT INTO runs (run_id, namespace, workflow, input, status, created_at,
                              finished_at, result)
            SELECT 'old-' || i, '{NS}', 'wf', '[]', 'completed', {old}, {old} + i, '1'
            FROM generate_series(1, {FINISHED}) AS i;
            INSERT INTO history (run_id, seq, kind, name, value, recorded_at)
            SELECT 'old-' || i, s, 'activity', 'a', '1', {old}
            FROM generate_series(1, {FINISHED}) AS i, generate_series(0, 2) AS s;
            ANALYZE""")
        await conn.close()
        for i in range(WAITING):
            await start_waiting(store, f"w{i}", clock, match={"data.order_id": i})
        purging = asyncio.create_task(purge_finished_runs(store, batch=500))
        accept_lat: list[float] = []
        claim_lat: list[float] = []
        resumed: list[tuple[str, ...]] = []

        async def send_events() -> None:
            for i in range(WAITING):
                t0 = time.perf_counter()
                [result] = await store.accept_events(NS, [event(f"e{i}", data={"order_id": i})])
                accept_lat.append(time.perf_counter() - t0)
                resumed.append(result.resumed_runs)

        async def claim_while_purging() -> None:
            n = 0
            while not purging.done() or n < 20:
                n += 1
                await store.create_run(new_run(f"new-{n}"))
                t0 = time.perf_counter()
                claimed = await store.claim_runs("w", limit=1, lease_seconds=30,
                                                 run_ids=[f"new-{n}"])
                claim_lat.append(time.perf_counter() - t0)
                assert [c.run.run_id for c in claimed] == [f"new-{n}"]

        await asyncio.wait_for(asyncio.gather(send_events(), claim_while_purging()), 120)
        assert await purging == FINISHED
        assert resumed == [(f"w{i}",) for i in range(WAITING)]
        assert await store.count_events() == WAITING
        for i in range(WAITING):
            run = await store.get_run(f"w{i}")
            assert run is not None and run.status is RunStatus.PENDING
        assert await store.list_runs(status=RunStatus.COMPLETED) == []
        assert max(claim_lat) < 2.0 and max(accept_lat) < 2.0, (max(claim_lat), max(accept_lat))
    finally:
        await store.close()
