"""Activity attempts recorded before they run, and recoveries counted at claim time."""

from __future__ import annotations

import pytest

from kenning.core.errors import LeaseLost
from kenning.core.models import RunStatus
from kenning.core.store import Store
from tests.conftest import FakeClock
from tests.store.conftest import claim_one, start_claimed, step, timer_wait, wait_on


async def test_recorded_attempts_come_back_with_the_next_claim(store: Store,
                                                               fake_clock: FakeClock) -> None:
    lease = await start_claimed(store, "r1", lease_seconds=10)
    await store.record_attempts(lease, {2: 1, 0: 3})
    run = await store.get_run("r1")
    assert run is not None and run.activity_attempts == {0: 3, 2: 1}
    assert run.recoveries == 0
    fake_clock.advance(11)  # the worker is lost: its lease expires
    claimed = await claim_one(store, "r1", worker="w2")
    assert claimed.run.activity_attempts == {0: 3, 2: 1}
    assert claimed.run.recoveries == 1
    await store.record_attempts(claimed.lease, {})
    run = await store.get_run("r1")
    assert run is not None and run.activity_attempts == {}


async def test_recording_attempts_is_fenced(store: Store, fake_clock: FakeClock) -> None:
    lease = await start_claimed(store, "r1", lease_seconds=10)
    fake_clock.advance(11)
    taken = await claim_one(store, "r1", worker="w2")
    with pytest.raises(LeaseLost) as lost:
        await store.record_attempts(lease, {0: 2})
    assert (lost.value.epoch, lost.value.owner, lost.value.status) == (
        taken.lease.epoch, "w2", "running")
    run = await store.get_run("r1")
    assert run is not None and run.activity_attempts == {}


async def test_recoveries_count_lost_workers_until_the_run_moves_on(
    store: Store, fake_clock: FakeClock
) -> None:
    lease = await start_claimed(store, "r1", lease_seconds=10)
    for expected in (1, 2, 3):
        fake_clock.advance(11)
        claimed = await claim_one(store, "r1", worker=f"w{expected}", lease_seconds=10)
        assert claimed.run.recoveries == expected
        lease = claimed.lease
        await store.record_attempts(lease, {0: expected})  # not progress
    await store.append_steps(lease, [step(0)])  # progress: the count starts again
    run = await store.get_run("r1")
    assert run is not None and run.recoveries == 0
    # a run taken back from a wait, or handed back on shutdown, was not lost
    await wait_on(store, lease, timer_wait(1, fake_clock() + 1))
    fake_clock.advance(1)
    claimed = await claim_one(store, "r1")
    assert claimed.run.recoveries == 0
    await store.release_run(claimed.lease)
    claimed = await claim_one(store, "r1")
    assert claimed.run.recoveries == 0 and claimed.run.status is RunStatus.RUNNING


async def test_reclaiming_own_runs_counts_as_a_recovery(store: Store) -> None:
    await start_claimed(store, "r1", worker="w1", lease_seconds=60)
    [again] = await store.claim_runs("w1", limit=5, lease_seconds=60, reclaim_own=True)
    assert again.run.recoveries == 1


async def test_attempts_ride_with_a_step_and_a_release_forgets_them(store: Store) -> None:
    lease = await start_claimed(store, "r1")
    await store.append_steps(lease, [step(0)], attempts={1: 1})
    run = await store.get_run("r1")
    assert run is not None and run.activity_attempts == {1: 1}
    await store.append_steps(lease, [step(1)])  # without attempts: left as they are
    run = await store.get_run("r1")
    assert run is not None and run.activity_attempts == {1: 1}
    await store.release_run(lease)
    claimed = await claim_one(store, "r1")
    assert claimed.run.activity_attempts == {} and claimed.run.recoveries == 0


async def test_taking_back_runs_one_dropped_itself_is_no_recovery(store: Store) -> None:
    await start_claimed(store, "r1", worker="w1", lease_seconds=60)
    [again] = await store.claim_runs("w1", limit=5, lease_seconds=60, run_ids=["r1"],
                                     reclaim_own=True, recovering=False)
    assert again.run.recoveries == 0 and again.lease.epoch == 2
