"""The operator's scans of unfinished runs: grouped counts of the runs that need a worker,
and pages of unfinished runs from the oldest, on both stores; and both correct, by index,
at 100,000 unfinished runs on PostgreSQL."""

from __future__ import annotations

import time

import asyncpg
import pytest

from kenning.core.models import NewRun, RunCount, RunStatus
from kenning.core.store import Store
from kenning.stores.postgres import PostgresStore
from tests.conftest import FakeClock
from tests.store.conftest import claim_one, new_run, timer_wait, wait_on


def counts(groups: list[RunCount]) -> dict[tuple[str, str, str | None], int]:
    return {(g.namespace, g.workflow, g.pool): g.count for g in groups}


async def test_active_runs_are_counted_by_namespace_workflow_and_pool(
        store: Store, fake_clock: FakeClock) -> None:
    for i in range(3):
        await store.create_run(new_run(f"a{i}", workflow="pay"))
    await store.create_run(NewRun(run_id="p1", namespace="default", workflow="pay",
                                  input="[]", pool="gpu"))
    await store.create_run(new_run("b1", namespace="other", workflow="ship"))
    running = await claim_one(store, "a0")
    del running
    soon = await claim_one(store, "a1")
    await wait_on(store, soon.lease, timer_wait(0, fake_clock() + 0.5))
    await store.create_run(new_run("later"))
    late = await claim_one(store, "later")
    await wait_on(store, late.lease, timer_wait(0, fake_clock() + 3600))
    await store.create_run(new_run("done"))
    done = await claim_one(store, "done")
    await store.finish_run(done.lease, RunStatus.COMPLETED, result="1")

    got = counts(await store.count_active_runs(wake_before=fake_clock() + 1))
    assert got == {("default", "pay", None): 3, ("default", "pay", "gpu"): 1,
                   ("other", "ship", None): 1}
    got = counts(await store.count_active_runs(wake_before=fake_clock()))
    assert got[("default", "pay", None)] == 2  # the timer is not due yet


async def test_unfinished_runs_page_from_the_oldest(store: Store, fake_clock: FakeClock) -> None:
    ids = []
    for i in range(7):
        fake_clock.advance(1.0 if i % 3 else 0.0)  # some created at the same instant
        await store.create_run(new_run(f"r{i}"))
        ids.append(f"r{i}")
    done = await claim_one(store, "r2")
    await store.finish_run(done.lease, RunStatus.FAILED, error="x")
    seen, after = [], None
    while True:
        page = await store.list_unfinished_runs(after=after, limit=2)
        seen.extend(page)
        if len(page) < 2:
            break
        after = (page[-1].created_at, page[-1].run_id)
    assert [r.run_id for r in seen] == [i for i in ids if i != "r2"]
    keys = [(r.created_at, r.run_id) for r in seen]
    assert keys == sorted(keys)


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
async def test_both_hold_at_100k_unfinished_runs(store: Store, pg_dsn: str) -> None:
    assert isinstance(store, PostgresStore)
    conn = await asyncpg.connect(pg_dsn)
    try:
        # 100,000 unfinished: 40k pending, 20k running, 40k waiting (10k due); 10k finished.
        await conn.execute("""
            INSERT INTO runs (run_id, namespace, workflow, input, status, created_at, pool,
                              wait_kind, wake_at)
            SELECT 'bulk-' || g, 'ns' || (g % 4), 'wf' || (g % 3), '[]',
                   CASE WHEN g <= 40000 THEN 'pending' WHEN g <= 60000 THEN 'running'
                        WHEN g <= 100000 THEN 'waiting_for_timer' ELSE 'completed' END,
                   1000 + (g * 7919 % 110000) / 10.0,
                   CASE WHEN g % 5 = 0 THEN 'gpu' END,
                   CASE WHEN g > 60000 AND g <= 100000 THEN 'timer' END,
                   CASE WHEN g > 60000 AND g <= 70000 THEN 50.0
                        WHEN g > 70000 AND g <= 100000 THEN 1e12 END
            FROM generate_series(1, 110000) AS g""")
        await conn.execute("ANALYZE runs")
        plan = "\n".join(r[0] for r in await conn.fetch(
            "EXPLAIN SELECT * FROM runs WHERE status IN ('pending', 'running', "
            "'waiting_for_event', 'waiting_for_timer') AND (created_at, run_id) > ($1, $2) "
            "ORDER BY created_at, run_id LIMIT 5000", 1500.0, "x"))
        assert "runs_unfinished_created" in plan, plan
    finally:
        await conn.close()

    began = time.monotonic()
    groups = await store.count_active_runs(wake_before=100.0)
    count_took = time.monotonic() - began
    assert sum(g.count for g in groups) == 40000 + 20000 + 10000
    assert len(groups) == 4 * 3 * 2
    by_pool: dict[str | None, int] = {}
    for g in groups:
        by_pool[g.pool] = by_pool.get(g.pool, 0) + g.count
    assert by_pool["gpu"] == 70000 // 5

    seen: set[str] = set()
    last: tuple[float, str] | None = None
    began = time.monotonic()
    while True:
        page = await store.list_unfinished_runs(after=last, limit=5000)
        for run in page:
            key = (run.created_at, run.run_id)
            assert last is None or key > last
            last = key
            seen.add(run.run_id)
        if len(page) < 5000:
            break
    sweep_took = time.monotonic() - began
    assert len(seen) == 100000 and all(int(r[5:]) <= 100000 for r in seen)
    assert count_took < 5 and sweep_took < 30, (count_took, sweep_took)
