"""Claiming runnable runs, leases, their renewal and release, and fencing."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from kenning.core.errors import LeaseLost
from kenning.core.models import RunStatus, StepKind
from kenning.core.store import Store
from tests.conftest import FakeClock
from tests.store.conftest import (
    StoreFactory,
    claim_one,
    event_wait,
    new_run,
    start_claimed,
    step,
    timer_wait,
    wait_on,
)


async def test_claim_takes_pending_runs_oldest_first(store: Store,
                                                     fake_clock: FakeClock) -> None:
    for i in range(3):
        await store.create_run(new_run(f"r{i}"))
        fake_clock.advance(1)
    claimed = await store.claim_runs("w1", limit=10, lease_seconds=30)
    assert [c.run.run_id for c in claimed] == ["r0", "r1", "r2"]
    for item in claimed:
        assert item.run.status is RunStatus.RUNNING
        assert item.run.lease_owner == "w1"
        assert item.run.lease_expires == fake_clock() + 30
        assert item.run.started_at == fake_clock()
        assert item.lease.owner == "w1" and item.lease.epoch == item.run.epoch == 1
        assert item.history == []
    assert await store.claim_runs("w2", limit=10, lease_seconds=30) == []


async def test_claim_respects_limit(store: Store, fake_clock: FakeClock) -> None:
    for i in range(5):
        await store.create_run(new_run(f"r{i}"))
        fake_clock.advance(1)
    first = await store.claim_runs("w1", limit=2, lease_seconds=30)
    second = await store.claim_runs("w1", limit=2, lease_seconds=30)
    third = await store.claim_runs("w1", limit=2, lease_seconds=30)
    assert [[c.run.run_id for c in b] for b in (first, second, third)] == [
        ["r0", "r1"], ["r2", "r3"], ["r4"]]
    assert await store.claim_runs("w1", limit=0, lease_seconds=30) == []


async def test_claim_filters_by_workflow_and_run_id(store: Store) -> None:
    await store.create_run(new_run("a1", workflow="alpha"))
    await store.create_run(new_run("b1", workflow="beta"))
    await store.create_run(new_run("b2", workflow="beta"))
    assert await store.claim_runs("w1", limit=10, lease_seconds=30, workflows=[]) == []
    assert await store.claim_runs("w1", limit=10, lease_seconds=30, run_ids=[]) == []
    got = await store.claim_runs("w1", limit=10, lease_seconds=30, workflows=["gamma", "beta"],
                                 run_ids=["b2", "a1"])
    assert [c.run.run_id for c in got] == ["b2"]
    got = await store.claim_runs("w1", limit=10, lease_seconds=30, workflows=["alpha"])
    assert [c.run.run_id for c in got] == ["a1"]
    got = await store.claim_runs("w1", limit=10, lease_seconds=30, run_ids=["b1"])
    assert [c.run.run_id for c in got] == ["b1"]


async def test_claim_loads_the_history(store: Store) -> None:
    lease = await start_claimed(store, "r1", lease_seconds=5)
    await store.append_steps(lease, [step(0, "a"), step(1, "b")])
    await start_claimed(store, "r2")
    await store.release_run(lease)
    claimed = await store.claim_runs("w2", limit=10, lease_seconds=30)
    assert [c.run.run_id for c in claimed] == ["r1"]
    assert [(s.seq, s.name) for s in claimed[0].history] == [(0, "a"), (1, "b")]


async def test_expired_lease_is_taken_over_and_fenced(store: Store,
                                                      fake_clock: FakeClock) -> None:
    old = await start_claimed(store, "r1", "w1", lease_seconds=10)
    fake_clock.advance(9)
    assert await store.claim_runs("w2", limit=10, lease_seconds=10) == []
    fake_clock.advance(2)
    taken = await claim_one(store, "r1", "w2")
    assert taken.lease.epoch == old.epoch + 1
    assert taken.run.lease_owner == "w2"
    before = await store.get_run("r1")
    for write in (
        store.append_steps(old, [step(0)]),
        wait_on(store, old, timer_wait(0, fake_clock() + 5)),
        wait_on(store, old, event_wait(0, fake_clock)),
        store.finish_run(old, RunStatus.COMPLETED, result="1", steps=[step(0)]),
    ):
        with pytest.raises(LeaseLost):
            await write
    await store.release_run(old)  # a lost lease is not an error here, and changes nothing
    assert await store.get_run("r1") == before
    assert await store.load_history("r1") == []
    await store.append_steps(taken.lease, [step(0)])  # the new owner writes fine


async def test_live_lease_is_not_claimed_unless_reclaiming_own(store: Store) -> None:
    first = await start_claimed(store, "r1", "w1")
    assert await store.claim_runs("w1", limit=10, lease_seconds=30) == []
    assert await store.claim_runs("w2", limit=10, lease_seconds=30, reclaim_own=True) == []
    again = await store.claim_runs("w1", limit=10, lease_seconds=30, reclaim_own=True)
    assert [c.run.run_id for c in again] == ["r1"]
    assert again[0].lease.epoch == first.epoch + 1
    with pytest.raises(LeaseLost):
        await store.append_steps(first, [step(0)])


async def test_renew_extends_only_own_running_leases(store: Store,
                                                     fake_clock: FakeClock) -> None:
    await start_claimed(store, "r1", "w1", lease_seconds=10)
    await start_claimed(store, "r2", "w2", lease_seconds=10)
    fake_clock.advance(8)
    await store.renew_leases("w1", ["r1", "r2", "ghost"], 10)
    await store.renew_leases("w1", [], 10)
    fake_clock.advance(5)
    r1, r2 = await store.get_run("r1"), await store.get_run("r2")
    assert r1 is not None and r1.lease_expires == fake_clock() + 5
    assert r2 is not None and r2.lease_expires == fake_clock() - 3
    taken = await store.claim_runs("w3", limit=10, lease_seconds=10)
    assert [c.run.run_id for c in taken] == ["r2"]


async def test_release_makes_the_run_pending(store: Store, fake_clock: FakeClock) -> None:
    lease = await start_claimed(store, "r1")
    await store.append_steps(lease, [step(0)])
    await store.release_run(lease)
    run = await store.get_run("r1")
    assert run is not None
    assert (run.status, run.lease_owner, run.lease_expires) == (RunStatus.PENDING, None, None)
    again = await claim_one(store, "r1", "w2")
    assert again.lease.epoch == lease.epoch + 1
    assert [s.seq for s in again.history] == [0]


async def test_finish_run_records_result_and_steps(store: Store, fake_clock: FakeClock) -> None:
    lease = await start_claimed(store, "r1")
    fake_clock.advance(2)
    await store.finish_run(lease, RunStatus.COMPLETED, result='{"ok": true}',
                           steps=[step(0, "timer", None, kind=StepKind.TIMER)])
    run = await store.get_run("r1")
    assert run is not None
    assert run.status is RunStatus.COMPLETED and run.result == '{"ok": true}'
    assert run.finished_at == fake_clock() and run.lease_owner is None
    assert [s.kind for s in await store.load_history("r1")] == [StepKind.TIMER]
    lease2 = await start_claimed(store, "r2")
    await store.finish_run(lease2, RunStatus.FAILED, error="ValueError: boom")
    failed = await store.get_run("r2")
    assert failed is not None and failed.status is RunStatus.FAILED
    assert failed.error == "ValueError: boom"
    assert await store.claim_runs("w1", limit=10, lease_seconds=30) == []


async def test_concurrent_claims_never_share_a_run(make_store: StoreFactory) -> None:
    stores = [await make_store() for _ in range(3)]
    for i in range(120):
        await stores[0].create_run(new_run(f"r{i:03}"))

    async def drain(store: Store, worker: str) -> list[str]:
        got: list[str] = []
        while True:
            batch = await store.claim_runs(worker, limit=7, lease_seconds=30)
            if not batch:
                return got
            got.extend(c.run.run_id for c in batch)

    results = await asyncio.gather(*(drain(s, f"w{i}-{j}") for i, s in enumerate(stores)
                                     for j in range(3)))
    counts = Counter(run_id for got in results for run_id in got)
    assert len(counts) == 120
    assert max(counts.values()) == 1


async def test_failing_operation_rolls_back_alone(store: Store) -> None:
    leases = [await start_claimed(store, f"r{i}") for i in range(10)]
    await store.append_steps(leases[3], [step(0)])
    outcomes = await asyncio.gather(
        *(store.append_steps(lease, [step(0, "again")]) for lease in leases),
        return_exceptions=True)
    assert isinstance(outcomes[3], Exception)  # seq 0 was taken: a constraint violation
    assert [o for i, o in enumerate(outcomes) if i != 3] == [None] * 9
    for i in range(10):
        names = [s.name for s in await store.load_history(f"r{i}")]
        assert names == (["act"] if i == 3 else ["again"])
