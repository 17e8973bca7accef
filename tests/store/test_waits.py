"""Several waits at once (``begin_waits``): first-of-several event waits, timers beside them,
multi-type waits, the ordinal a delivered event takes, and looking without suspending."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from kenning.core.errors import LeaseLost
from kenning.core.events import record_from_json
from kenning.core.models import (
    Lease,
    Notification,
    NotificationKind,
    RunStatus,
    Step,
    StepKind,
    Wait,
    WaitKind,
)
from kenning.core.store import Store
from tests.conftest import FakeClock
from tests.store.conftest import (
    NS,
    StoreFactory,
    claim_one,
    event,
    event_wait,
    start_claimed,
    step,
    timer_wait,
    wait_on,
)

CountRows = Callable[[str], int]


def two_types(seq: int, clock: FakeClock, first: str, *others: str,
              match: dict[str, str] | None = None) -> Wait:
    """An event wait that takes any of several types."""
    return Wait(seq=seq, kind=WaitKind.EVENT, event_type=first, other_types=others,
                match=match, started_at=clock())


async def suspended(store: Store, run_id: str, waits: list[Wait], *, ordinal: int = 9,
                    steps: list[Step] | None = None) -> Lease:
    """Create and claim a run, then suspend it on ``waits``; the lease it had."""
    lease = await start_claimed(store, run_id)
    result = await store.begin_waits(lease, waits, steps or [], next_ordinal=ordinal)
    assert result.consumed is None
    return lease


async def test_a_run_suspends_on_several_waits_and_reads_them_back(
        store: Store, fake_clock: FakeClock, notes: list[Notification],
        count_rows: CountRows) -> None:
    first = event_wait(2, fake_clock, "order.paid", match={"data.id": "A"}, timeout=300)
    timer = timer_wait(3, fake_clock() + 60)
    multi = two_types(5, fake_clock, "order.cancelled", "order.refunded",
                      match={"data.id": "A"})
    lease = await suspended(store, "r1", [multi, timer, first], ordinal=4,
                            steps=[step(0), step(1, ordinal=0)])
    run = await store.get_run("r1")
    assert run is not None
    assert run.status is RunStatus.WAITING_FOR_EVENT
    assert (run.lease_owner, run.lease_expires) == (None, None)
    assert run.waits == (first, timer, multi)  # by seq
    assert run.wait == first and run.wait_ordinal == 4
    assert await store.next_wake_at() == timer.wake_at  # the earliest of all
    assert [(s.seq, s.ordinal) for s in await store.load_history("r1")] == [(0, None), (1, 0)]
    # one index row per (event wait, type): order.paid, order.cancelled, order.refunded
    assert count_rows("wait_keys WHERE run_id = 'r1'") == 3
    assert Notification(NotificationKind.TIMER, "r1", timer.wake_at) in notes
    with_lease = await store.claim_runs("w2", limit=10, lease_seconds=30)
    assert with_lease == []  # nothing due yet
    fake_clock.advance(60)
    claimed = await claim_one(store, "r1", "w2")
    # the worker learns every wait it was suspended on, and the ordinal to go on from
    assert claimed.run.waits == (first, timer, multi) and claimed.run.wait_ordinal == 4
    assert claimed.lease.epoch > lease.epoch
    await store.append_steps(claimed.lease, [step(3, "sleep", None, kind=StepKind.TIMER)])
    after = await store.get_run("r1")
    assert after is not None and after.waits == () and after.wait is None
    assert after.wait_ordinal is None


async def test_one_wait_reads_back_as_the_only_wait(store: Store,
                                                     fake_clock: FakeClock) -> None:
    wait = event_wait(1, fake_clock, match={"data.id": "A"}, lookback=30.0)
    await suspended(store, "r1", [wait], ordinal=1)
    run = await store.get_run("r1")
    assert run is not None and run.waits == (wait,) and run.wait == wait
    lease = await start_claimed(store, "r2")
    await wait_on(store, lease, timer_wait(0, fake_clock() + 5))
    timer = await store.get_run("r2")
    assert timer is not None and timer.status is RunStatus.WAITING_FOR_TIMER
    assert timer.waits == (timer_wait(0, fake_clock() + 5),) and timer.wait_ordinal == 0


async def test_timers_and_retries_alone_wait_for_a_timer(store: Store,
                                                          fake_clock: FakeClock) -> None:
    retry = Wait(seq=1, kind=WaitKind.RETRY, wake_at=fake_clock() + 30, attempt=2,
                 last_error="OSError: down")
    timer = timer_wait(2, fake_clock() + 10)
    await suspended(store, "r1", [retry, timer], ordinal=3)
    run = await store.get_run("r1")
    assert run is not None and run.status is RunStatus.WAITING_FOR_TIMER
    assert run.waits == (retry, timer) and run.wait_ordinal == 3
    assert await store.next_wake_at() == timer.wake_at
    [result] = await store.accept_events(NS, [event("e1", to_run="r1")])
    assert result.resumed_runs == ()


async def test_an_event_resumes_the_wait_it_matches_with_the_stored_ordinal(
        store: Store, fake_clock: FakeClock, notes: list[Notification]) -> None:
    paid = event_wait(2, fake_clock, "order.paid", match={"data.id": "A"})
    shipped = event_wait(3, fake_clock, "order.shipped", match={"data.id": "A"})
    await suspended(store, "r1", [paid, shipped, timer_wait(4, fake_clock() + 60)], ordinal=2)
    [miss] = await store.accept_events(NS, [event("e0", "order.shipped", data={"id": "B"})])
    assert miss.resumed_runs == ()
    fake_clock.advance(1)
    ev = event("e1", "order.shipped", data={"id": "A"})
    [hit] = await store.accept_events(NS, [ev])
    assert hit.resumed_runs == ("r1",)
    [recorded] = await store.load_history("r1")
    assert (recorded.seq, recorded.kind, recorded.name, recorded.ordinal) == (
        3, StepKind.EVENT, "order.shipped", 2)
    assert recorded.recorded_at == fake_clock()
    assert recorded.value is not None and record_from_json(recorded.value) == ev
    run = await store.get_run("r1")
    assert run is not None and run.status is RunStatus.PENDING
    assert (run.waits, run.wait_ordinal) == ((), None)
    assert Notification(NotificationKind.RUNNABLE, "r1") in notes
    # resumed: the other waits hold the run no more
    [late] = await store.accept_events(NS, [event("e2", "order.paid", data={"id": "A"})])
    assert late.resumed_runs == ()
    assert len(await store.load_history("r1")) == 1


async def test_a_multi_type_wait_is_resumed_by_either_type(store: Store,
                                                            fake_clock: FakeClock) -> None:
    for run_id in ("r1", "r2"):
        await suspended(store, run_id, [two_types(1, fake_clock, "a", "b",
                                                  match={"data.id": run_id})], ordinal=1)
    [by_a] = await store.accept_events(NS, [event("e1", "a", data={"id": "r1"})])
    [by_b] = await store.accept_events(NS, [event("e2", "b", data={"id": "r2"})])
    [other] = await store.accept_events(NS, [event("e3", "c", data={"id": "r2"})])
    assert (by_a.resumed_runs, by_b.resumed_runs, other.resumed_runs) == (("r1",), ("r2",), ())
    for run_id, type_ in (("r1", "a"), ("r2", "b")):
        [recorded] = await store.load_history(run_id)
        assert (recorded.seq, recorded.name, recorded.ordinal) == (1, "a|b", 1)
        assert record_from_json(recorded.value or "").type == type_
    # addressed events too, and begin_waits finds either type already there
    fake_clock.advance(1)  # (the kept events above came before these waits)
    await suspended(store, "r3", [two_types(0, fake_clock, "a", "b")], ordinal=0)
    [addressed] = await store.accept_events(NS, [event("e4", "b", to_run="r3")])
    assert addressed.resumed_runs == ("r3",)
    lease = await start_claimed(store, "r4")
    await store.accept_events(NS, [event("e5", "b", to_run="r4")])
    result = await store.begin_waits(lease, [two_types(0, fake_clock, "a", "b")],
                                     next_ordinal=0)
    assert result.consumed is not None and result.consumed.name == "a|b"
    assert record_from_json(result.consumed.value or "").id == "e5"


async def test_the_lowest_seq_wins_when_one_event_matches_several_waits(
        store: Store, fake_clock: FakeClock, count_rows: CountRows) -> None:
    same = {"data.id": "A"}
    # two waits with the same type, path and value: both indexed, under their seq
    await suspended(store, "r1", [event_wait(5, fake_clock, match=same),
                                  event_wait(3, fake_clock, match=same)], ordinal=7)
    assert count_rows("wait_keys WHERE run_id = 'r1'") == 2
    # one of two keys offered for seq 2, the only key of seq 4: the run is a candidate
    await suspended(store, "r2", [event_wait(2, fake_clock, match={"data.id": "A",
                                                                   "data.n": 1}),
                                  event_wait(4, fake_clock, match=same)], ordinal=0)
    [result] = await store.accept_events(NS, [event("e1", data={"id": "A", "n": 2})])
    assert sorted(result.resumed_runs) == ["r1", "r2"]
    assert [s.seq for s in await store.load_history("r1")] == [3]
    assert [s.seq for s in await store.load_history("r2")] == [4]
    # consuming at once: the lowest event wait that has one takes it
    lease = await start_claimed(store, "r3")
    await store.accept_events(NS, [event("e2", to_run="r3", data={"id": "A"})])
    found = await store.begin_waits(lease, [event_wait(8, fake_clock, match=same),
                                            event_wait(6, fake_clock, "other.type"),
                                            event_wait(7, fake_clock, match=same)],
                                    next_ordinal=6)
    assert found.consumed is not None
    assert (found.consumed.seq, found.consumed.ordinal) == (7, 6)
    assert await store.load_history("r3") == [found.consumed]
    run = await store.get_run("r3")
    assert run is not None and run.status is RunStatus.RUNNING and run.waits == ()
    assert run.lease_owner == "w1"


async def test_a_run_is_resumed_once_per_accepted_batch(store: Store,
                                                         fake_clock: FakeClock) -> None:
    await suspended(store, "r1", [event_wait(0, fake_clock, "a"),
                                  event_wait(1, fake_clock, "b")], ordinal=0)
    results = await store.accept_events(NS, [event("e1", "b"), event("e2", "a"),
                                             event("e3", "b", to_run="r1")])
    assert [r.resumed_runs for r in results] == [("r1",), (), ()]
    [recorded] = await store.load_history("r1")
    assert (recorded.seq, recorded.name) == (1, "b")
    # the addressed event stays in the inbox for a later wait
    lease = (await claim_one(store, "r1")).lease
    later = await store.begin_waits(lease, [event_wait(2, fake_clock, "b")], next_ordinal=1)
    assert later.consumed is not None
    assert record_from_json(later.consumed.value or "").id == "e3"


async def test_without_suspend_an_event_is_consumed_or_nothing_is_written(
        store: Store, fake_clock: FakeClock, count_rows: CountRows,
        notes: list[Notification]) -> None:
    lease = await start_claimed(store, "r1")
    waits = [event_wait(2, fake_clock, "a"), timer_wait(3, fake_clock() + 60)]
    result = await store.begin_waits(lease, waits, [step(0), step(1)], next_ordinal=1,
                                     suspend=False)
    assert result.consumed is None
    run = await store.get_run("r1")
    assert run is not None and run.status is RunStatus.RUNNING
    assert run.lease_owner == "w1" and run.epoch == lease.epoch
    assert run.waits == () and run.wait_ordinal is None
    assert [s.seq for s in await store.load_history("r1")] == [0, 1]
    assert count_rows("wait_keys WHERE run_id = 'r1'") == 0
    assert not [n for n in notes if n.kind in (NotificationKind.WAITING,
                                               NotificationKind.TIMER)]
    assert await store.next_wake_at() is None
    # a broadcast event now does not resume it (it waits for nothing); one addressed to it
    # waits in its inbox, and the next look finds it
    [broadcast] = await store.accept_events(NS, [event("e1", "a")])
    [addressed] = await store.accept_events(NS, [event("e2", "a", to_run="r1")])
    assert broadcast.resumed_runs == addressed.resumed_runs == ()
    again = await store.begin_waits(lease, waits, next_ordinal=1, suspend=False)
    assert again.consumed is not None
    assert (again.consumed.seq, again.consumed.ordinal) == (2, 1)
    assert record_from_json(again.consumed.value or "").id == "e1"  # the first that came
    run = await store.get_run("r1")
    assert run is not None and run.status is RunStatus.RUNNING and run.lease_owner == "w1"
    # the lease still holds: the run goes on
    await store.append_steps(lease, [step(3, "sleep", None, kind=StepKind.TIMER)])
    # timers only, no suspend: the steps are recorded, nothing else
    await store.begin_waits(lease, [timer_wait(5, fake_clock() + 5)], [step(4)],
                            next_ordinal=4, suspend=False)
    run = await store.get_run("r1")
    assert run is not None and run.status is RunStatus.RUNNING and run.waits == ()
    assert [s.seq for s in await store.load_history("r1")] == [0, 1, 2, 3, 4]


async def test_an_event_wait_with_a_deadline_beside_a_timer_wakes_at_the_earliest(
        store: Store, fake_clock: FakeClock) -> None:
    waits = [event_wait(1, fake_clock, timeout=100), timer_wait(2, fake_clock() + 40)]
    await suspended(store, "r1", waits, ordinal=1)
    run = await store.get_run("r1")
    assert run is not None and run.waits == tuple(waits)
    assert await store.next_wake_at() == fake_clock() + 40
    fake_clock.advance(40)
    # due: the timer is the first to happen, so a late event no longer resumes the run
    [late] = await store.accept_events(NS, [event("e1")])
    assert late.resumed_runs == ()
    claimed = await claim_one(store, "r1")
    assert claimed.run.waits == tuple(waits) and claimed.history == []


async def test_begin_waits_is_fenced(store: Store, fake_clock: FakeClock) -> None:
    lease = await start_claimed(store, "r1", lease_seconds=5)
    fake_clock.advance(6)
    await claim_one(store, "r1", "w2")
    for suspend in (True, False):
        try:
            await store.begin_waits(lease, [event_wait(1, fake_clock)], [step(0)],
                                    next_ordinal=1, suspend=suspend)
        except LeaseLost:
            pass
        else:
            raise AssertionError("a stale lease suspended the run")
    run = await store.get_run("r1")
    assert run is not None and run.status is RunStatus.RUNNING and run.lease_owner == "w2"
    assert await store.load_history("r1") == []


async def test_lookback_is_per_wait(store: Store, fake_clock: FakeClock) -> None:
    await store.accept_events(NS, [event("old-a", "a"), event("old-b", "b")])
    fake_clock.advance(60)
    lease = await start_claimed(store, "r1")
    waits = [event_wait(1, fake_clock, "a"), event_wait(2, fake_clock, "b", lookback=120)]
    result = await store.begin_waits(lease, waits, next_ordinal=1)
    assert result.consumed is not None and result.consumed.seq == 2
    assert record_from_json(result.consumed.value or "").id == "old-b"


async def test_no_event_is_lost_between_several_waits_and_accept(make_store: StoreFactory,
                                                                 fake_clock: FakeClock) -> None:
    """Runs beginning two waits (one of two types) while the events of their second type
    arrive through another store: each run gets exactly one event, once."""
    worker, sink = await make_store(), await make_store()
    count = 40
    leases = [await start_claimed(worker, f"r{i:02}") for i in range(count)]

    async def wait(i: int) -> Step | None:
        await asyncio.sleep(0.001 * (i % 7))
        waits = [event_wait(0, fake_clock, "never", match={"data.n": i}),
                 two_types(1, fake_clock, "a", "b", match={"data.n": i})]
        return (await worker.begin_waits(leases[i], waits, next_ordinal=0)).consumed

    async def send(i: int) -> tuple[str, ...]:
        await asyncio.sleep(0.001 * (i % 5))
        [result] = await sink.accept_events(NS, [event(f"e{i}", "b", data={"n": i})])
        return result.resumed_runs

    outcomes = await asyncio.gather(*(wait(i) for i in range(count)),
                                    *(send(i) for i in range(count)))
    for i in range(count):
        consumed, resumed = outcomes[i], outcomes[count + i]
        assert (consumed is not None) != (resumed == (f"r{i:02}",)), i
        [recorded] = await worker.load_history(f"r{i:02}")
        assert (recorded.seq, recorded.name) == (1, "a|b")
