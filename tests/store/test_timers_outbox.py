"""Durable timers (due runs, the nearest wake time) and the transactional outbox."""

from __future__ import annotations

import pytest

from kenning.core.errors import LeaseLost
from kenning.core.models import RunStatus, Wait, WaitKind
from kenning.core.store import Store
from tests.conftest import FakeClock
from tests.store.conftest import (
    claim_one,
    event,
    new_run,
    start_claimed,
    start_waiting,
    step,
    timer_wait,
    wait_on,
)


async def test_suspended_run_becomes_claimable_when_due(store: Store,
                                                        fake_clock: FakeClock) -> None:
    lease = await start_claimed(store, "r1")
    wait = timer_wait(1, fake_clock() + 60)
    await wait_on(store, lease, wait, [step(0)])
    run = await store.get_run("r1")
    assert run is not None
    assert run.status is RunStatus.WAITING_FOR_TIMER and run.wait == wait
    assert run.lease_owner is None
    assert [s.seq for s in await store.load_history("r1")] == [0]
    fake_clock.advance(59)
    assert await store.claim_runs("w1", limit=10, lease_seconds=30) == []
    fake_clock.advance(1)
    claimed = await claim_one(store, "r1", "w2")
    assert claimed.run.wait == wait  # the worker learns what it waited for
    assert claimed.run.status is RunStatus.RUNNING
    assert [s.seq for s in claimed.history] == [0]
    await store.append_steps(claimed.lease, [step(1, "timer", None)])
    after = await store.get_run("r1")
    assert after is not None and after.wait is None  # moving on clears the wait


async def test_retry_wait_keeps_attempt_and_error(store: Store, fake_clock: FakeClock) -> None:
    lease = await start_claimed(store, "r1")
    retry = Wait(seq=0, kind=WaitKind.RETRY, wake_at=fake_clock() + 2, attempt=2,
                       last_error="OSError: down")
    await wait_on(store, lease, retry)
    fake_clock.advance(2)
    claimed = await claim_one(store, "r1")
    assert claimed.run.wait == retry


async def test_next_wake_at_is_the_earliest_due_time(store: Store, fake_clock: FakeClock) -> None:
    assert await store.next_wake_at() is None
    now = fake_clock()
    await wait_on(store, await start_claimed(store, "t1"), timer_wait(0, now + 50))
    await start_waiting(store, "e1", fake_clock, timeout=20)
    await start_waiting(store, "e2", fake_clock)  # no timeout: no wake time
    await store.create_run(new_run("p1"))
    assert await store.next_wake_at() == now + 20
    fake_clock.advance(21)
    claimed = await claim_one(store, "e1")
    assert await store.next_wake_at() == now + 50
    await store.finish_run(claimed.lease, RunStatus.COMPLETED, result="null")
    await store.cancel_run("t1", "stop")
    assert await store.next_wake_at() is None


async def test_event_wait_deadline_makes_the_run_claimable(store: Store,
                                                           fake_clock: FakeClock) -> None:
    await start_waiting(store, "r1", fake_clock, timeout=10)
    assert await store.claim_runs("w1", limit=10, lease_seconds=30) == []
    fake_clock.advance(10)
    claimed = await claim_one(store, "r1")
    assert claimed.run.wait is not None and claimed.run.wait.wake_at == fake_clock()


async def test_outbox_rows_commit_with_their_step(store: Store, fake_clock: FakeClock) -> None:
    lease = await start_claimed(store, "r1", namespace="shop")
    sent = [event("o1", "order.shipped", data={"n": 1}), event("o2", "order.billed")]
    await store.append_steps(lease, [step(0, "order.shipped")], sent)
    [first] = await store.due_outbox(1, claim_seconds=5)
    assert first.event == sent[0] and (first.run_id, first.namespace, first.attempts) == (
        "r1", "shop", 0)
    [second] = await store.due_outbox(10, claim_seconds=5)  # the first is claimed: hidden
    assert second.event == sent[1] and first.pk < second.pk
    assert await store.due_outbox(10) == []

    await store.outbox_retry(first.pk, fake_clock() + 30, "503 from broker")
    await store.outbox_done(second.pk)
    fake_clock.advance(5)  # the claims lapse; the retried one is due only at +30
    assert await store.due_outbox(10) == []
    fake_clock.advance(25)
    [retried] = await store.due_outbox(10)
    assert (retried.pk, retried.attempts) == (first.pk, 1)
    await store.outbox_done(retried.pk)
    fake_clock.advance(60)
    assert await store.due_outbox(10) == []


async def test_an_unacknowledged_outbox_claim_lapses(store: Store, fake_clock: FakeClock
                                                     ) -> None:
    lease = await start_claimed(store, "r1")
    await store.append_steps(lease, [step(0, "sent")], [event("o1")])
    [claimed] = await store.due_outbox(10, claim_seconds=30)
    assert await store.due_outbox(10) == []  # another dispatcher sees nothing
    fake_clock.advance(30)  # the first dispatcher died without publishing
    [again] = await store.due_outbox(10)
    assert again.pk == claimed.pk


async def test_outbox_rows_of_a_lost_lease_are_not_written(store: Store,
                                                           fake_clock: FakeClock) -> None:
    lease = await start_claimed(store, "r1")
    await store.cancel_run("r1", "stop")
    with pytest.raises(LeaseLost):
        await store.append_steps(lease, [step(0)], [event("o1")])
    assert await store.due_outbox(10) == []
