"""Accepting events, waiting for them, and the rules that join the two."""

from __future__ import annotations

import asyncio
import json

import pytest

from kenning.core.events import record_from_json
from kenning.core.models import AcceptOutcome, RunStatus, StepKind, WaitKind
from kenning.core.store import Store
from tests.conftest import FakeClock
from tests.store.conftest import (
    EVENT_TYPE,
    NS,
    StoreFactory,
    claim_one,
    event,
    event_wait,
    start_claimed,
    start_waiting,
    step,
    wait_on,
)


async def test_a_wait_suspends_and_stores_the_wait(store: Store,
                                                            fake_clock: FakeClock) -> None:
    lease = await start_claimed(store, "r1")
    wait = event_wait(2, fake_clock, match={"data.order_id": "A"}, lookback=30.0, timeout=60)
    result = await wait_on(store, lease, wait, [step(0, "a"), step(1, "b")])
    assert result.consumed is None
    run = await store.get_run("r1")
    assert run is not None
    assert run.status is RunStatus.WAITING_FOR_EVENT
    assert (run.lease_owner, run.lease_expires) == (None, None)
    assert run.wait == wait
    assert [s.seq for s in await store.load_history("r1")] == [0, 1]


async def test_accept_resumes_every_matching_waiting_run(store: Store,
                                                         fake_clock: FakeClock) -> None:
    await start_waiting(store, "a", fake_clock, seq=0)
    await start_waiting(store, "b", fake_clock, seq=3, match={"data.order_id": "42"})
    await start_waiting(store, "c", fake_clock, match={"data.order_id": "7"})
    await start_waiting(store, "d", fake_clock, "other.type")
    await start_waiting(store, "e", fake_clock, namespace="elsewhere")
    fake_clock.advance(1)
    ev = event("e1", data={"order_id": "42"})
    [result] = await store.accept_events(NS, [ev])
    assert result.outcome is AcceptOutcome.ACCEPTED
    assert sorted(result.resumed_runs) == ["a", "b"]
    for run_id, seq in (("a", 0), ("b", 3)):
        run = await store.get_run(run_id)
        assert run is not None and run.status is RunStatus.PENDING and run.wait is None
        [recorded] = await store.load_history(run_id)
        assert (recorded.seq, recorded.kind, recorded.name) == (seq, StepKind.EVENT, EVENT_TYPE)
        assert recorded.recorded_at == fake_clock()
        assert recorded.value is not None and record_from_json(recorded.value) == ev
    for run_id in ("c", "d", "e"):
        run = await store.get_run(run_id)
        assert run is not None and run.status is RunStatus.WAITING_FOR_EVENT
        assert await store.load_history(run_id) == []
    claimed = await store.claim_runs("w2", limit=10, lease_seconds=30)
    assert sorted(c.run.run_id for c in claimed) == ["a", "b"]


async def test_accept_deduplicates_on_namespace_source_and_id(store: Store,
                                                              fake_clock: FakeClock) -> None:
    first = await store.accept_events(NS, [event("e1"), event("e1", source="/other"),
                                           event("e1")])
    assert [r.outcome for r in first] == [AcceptOutcome.ACCEPTED, AcceptOutcome.ACCEPTED,
                                          AcceptOutcome.DUPLICATE]
    fake_clock.advance(1)
    await start_waiting(store, "r1", fake_clock)
    [again] = await store.accept_events(NS, [event("e1", data={"x": 1})])
    assert again.outcome is AcceptOutcome.DUPLICATE and again.resumed_runs == ()
    run = await store.get_run("r1")
    assert run is not None and run.status is RunStatus.WAITING_FOR_EVENT
    assert await store.count_events() == 2
    assert await store.accept_events(NS, []) == []


async def test_one_event_posted_to_two_namespaces_wakes_the_runs_of_both(
        store: Store, fake_clock: FakeClock) -> None:
    await start_waiting(store, "in-a", fake_clock, namespace="team-a")
    await start_waiting(store, "in-b", fake_clock, namespace="team-b")
    [a] = await store.accept_events("team-a", [event("shared")])
    [b] = await store.accept_events("team-b", [event("shared")])
    [batch] = await store.accept_events("team-b", [event("shared")])
    assert (a.outcome, a.resumed_runs) == (AcceptOutcome.ACCEPTED, ("in-a",))
    assert (b.outcome, b.resumed_runs) == (AcceptOutcome.ACCEPTED, ("in-b",))
    assert batch.outcome is AcceptOutcome.DUPLICATE
    # several calls merged into one commit keep the namespaces apart as well
    fake_clock.advance(1)
    await start_waiting(store, "in-a2", fake_clock, namespace="team-a")
    await start_waiting(store, "in-b2", fake_clock, namespace="team-b")
    both = await asyncio.gather(store.accept_events("team-a", [event("twice")]),
                                store.accept_events("team-b", [event("twice")]))
    assert [r.resumed_runs for [r] in both] == [("in-a2",), ("in-b2",)]
    assert await store.count_events() == 4


async def test_match_on_subject_source_and_extension(store: Store,
                                                     fake_clock: FakeClock) -> None:
    await start_waiting(store, "r1", fake_clock,
                        match={"subject": "s-1", "source": "/shop", "region": "eu"})
    [miss] = await store.accept_events(NS, [event("e1", subject="s-1", source="/shop",
                                                  region="us")])
    assert miss.resumed_runs == ()
    [hit] = await store.accept_events(NS, [event("e2", subject="s-1", source="/shop",
                                                 region="eu")])
    assert hit.resumed_runs == ("r1",)


async def test_addressed_event_resumes_only_its_run(store: Store, fake_clock: FakeClock) -> None:
    await start_waiting(store, "r1", fake_clock)
    await start_waiting(store, "r2", fake_clock)
    [result] = await store.accept_events(NS, [event("e1", to_run="r2")])
    assert result.resumed_runs == ("r2",)
    run = await store.get_run("r1")
    assert run is not None and run.status is RunStatus.WAITING_FOR_EVENT


async def test_inbox_event_is_consumed_by_a_later_wait(store: Store,
                                                       fake_clock: FakeClock) -> None:
    lease = await start_claimed(store, "r1")
    [early] = await store.accept_events(NS, [event("e1", data={"n": 1}, to_run="r1")])
    assert early.resumed_runs == ()  # the run is running, not waiting: the event waits
    await store.accept_events(NS, [event("e0", to_run="r2"), event("e9", "other", to_run="r1"),
                                   event("e8", to_run="r1", source="/x")])
    await store.accept_events("elsewhere", [event("e7", to_run="r1")])
    fake_clock.advance(3600)  # addressed events are consumed however long ago they came
    result = await wait_on(store, lease, event_wait(0, fake_clock, match={"data.n": 1}))
    assert result.consumed is not None
    consumed = result.consumed
    assert (consumed.seq, consumed.kind, consumed.name) == (0, StepKind.EVENT, EVENT_TYPE)
    assert consumed.value is not None and record_from_json(consumed.value).id == "e1"
    assert await store.load_history("r1") == [consumed]
    run = await store.get_run("r1")
    assert run is not None and run.status is RunStatus.RUNNING and run.wait is None
    # the next wait (no match) takes the other addressed event of that type, then suspends
    second = await wait_on(store, lease, event_wait(1, fake_clock))
    assert second.consumed is not None
    assert record_from_json(second.consumed.value or "").id == "e8"
    third = await wait_on(store, lease, event_wait(2, fake_clock))
    assert third.consumed is None


async def test_lookback_consumes_kept_events(store: Store, fake_clock: FakeClock) -> None:
    await store.accept_events(NS, [event("old", data={"k": 1})])
    fake_clock.advance(10)
    await store.accept_events(NS, [event("new", data={"k": 2})])
    fake_clock.advance(10)
    # no lookback: only events received since the wait began
    lease = await start_claimed(store, "none")
    assert (await wait_on(store, lease, event_wait(0, fake_clock))).consumed is None
    # lookback 15 s reaches "new" (10 s ago) but not "old" (20 s ago)
    lease = await start_claimed(store, "short")
    got = await wait_on(store, lease, event_wait(0, fake_clock, lookback=15))
    assert got.consumed is not None and record_from_json(got.consumed.value or "").id == "new"
    lease = await start_claimed(store, "matched")
    got = await wait_on(store, lease, event_wait(0, fake_clock, lookback=60, match={"data.k": 1}))
    assert got.consumed is not None and record_from_json(got.consumed.value or "").id == "old"
    # the oldest first, and each run consumes a given event at most once
    lease = await start_claimed(store, "both")
    ids = []
    for seq in range(3):
        got = await wait_on(store, lease, event_wait(seq, fake_clock, lookback=60))
        ids.append(None if got.consumed is None else record_from_json(
            got.consumed.value or "").id)
    assert ids == ["old", "new", None]
    # kept events of another namespace are not seen
    lease = await start_claimed(store, "ns", namespace="elsewhere")
    got = await wait_on(store, lease, event_wait(0, fake_clock, lookback=60))
    assert got.consumed is None


async def test_event_that_resumed_a_run_is_not_consumed_again(store: Store,
                                                              fake_clock: FakeClock) -> None:
    await start_waiting(store, "r1", fake_clock)
    [result] = await store.accept_events(NS, [event("e1")])
    assert result.resumed_runs == ("r1",)
    lease = (await claim_one(store, "r1")).lease
    again = await wait_on(store, lease, event_wait(1, fake_clock, lookback=3600))
    assert again.consumed is None
    # another run may still take it with lookback
    other = await start_claimed(store, "r2")
    got = await wait_on(store, other, event_wait(0, fake_clock, lookback=3600))
    assert got.consumed is not None


async def test_timed_out_wait_is_not_resumed_after_claim(store: Store,
                                                         fake_clock: FakeClock) -> None:
    await start_waiting(store, "r1", fake_clock, timeout=30)
    fake_clock.advance(31)
    claimed = await claim_one(store, "r1")
    assert claimed.run.wait is not None and claimed.run.wait.kind is WaitKind.EVENT
    [late] = await store.accept_events(NS, [event("late")])
    assert late.resumed_runs == ()
    run = await store.get_run("r1")
    assert run is not None and run.status is RunStatus.RUNNING


async def test_purge_expired_drops_old_events(make_store: StoreFactory,
                                              fake_clock: FakeClock) -> None:
    store = await make_store(event_retention=60.0)
    await store.accept_events(NS, [event("e1")])
    fake_clock.advance(30)
    await store.accept_events(NS, [event("e2"), event("e3", to_run="r1")])
    assert await store.count_events() == 3
    fake_clock.advance(31)
    assert await store.purge_expired() == 1
    assert await store.count_events() == 2
    fake_clock.advance(60)
    assert await store.purge_expired() == 2
    assert await store.purge_expired() == 0
    [again] = await store.accept_events(NS, [event("e1")])
    assert again.outcome is AcceptOutcome.ACCEPTED  # dedup lasts as long as retention


@pytest.mark.parametrize("addressed", [False, True], ids=["broadcast", "addressed"])
async def test_no_event_is_lost_between_wait_and_accept(make_store: StoreFactory,
                                                        fake_clock: FakeClock,
                                                        addressed: bool) -> None:
    """Runs starting to wait while their events arrive: each gets its event exactly once."""
    worker, sink = await make_store(), await make_store()
    count = 60
    leases = [await start_claimed(worker, f"r{i:02}") for i in range(count)]

    async def wait(i: int) -> bool:
        await asyncio.sleep(0.001 * (i % 7))
        got = await wait_on(worker, leases[i], event_wait(0, fake_clock, match={"data.n": i}))
        return got.consumed is not None

    async def send(i: int) -> tuple[str, ...]:
        await asyncio.sleep(0.001 * (i % 5))
        to_run = f"r{i:02}" if addressed else None
        [result] = await sink.accept_events(NS, [event(f"e{i}", data={"n": i}, to_run=to_run)])
        return result.resumed_runs

    outcomes = await asyncio.gather(*(wait(i) for i in range(count)),
                                    *(send(i) for i in range(count)))
    consumed, resumed = outcomes[:count], outcomes[count:]
    for i in range(count):
        by_accept = resumed[i] == (f"r{i:02}",)
        assert consumed[i] != by_accept, f"run r{i:02}: consumed={consumed[i]} resumed={by_accept}"
        run = await worker.get_run(f"r{i:02}")
        assert run is not None and run.status is not RunStatus.WAITING_FOR_EVENT
        history = await worker.load_history(f"r{i:02}")
        assert len(history) == 1 and json.loads(
            record_from_json(history[0].value or "").data or "null") == {"n": i}


async def test_events_of_one_call_apply_in_order(store: Store, fake_clock: FakeClock) -> None:
    await start_waiting(store, "a", fake_clock)
    await start_waiting(store, "b", fake_clock, match={"data.n": 2})
    await start_waiting(store, "c", fake_clock, "other.type")
    results = await store.accept_events(NS, [
        event("e1", data={"n": 1}),
        event("e2", data={"n": 2}),
        event("e3", "other.type", to_run="c"),
        event("e1", data={"n": 2}),
        event("e4", data={"n": 2}),  # b took e2 already
        event("e5", "other.type", to_run="c"),  # c took e3 already: kept in its inbox
    ])
    assert [(r.outcome.value, r.resumed_runs) for r in results] == [
        ("accepted", ("a",)), ("accepted", ("b",)), ("accepted", ("c",)), ("duplicate", ()),
        ("accepted", ()), ("accepted", ())]
    names = {run_id: [record_from_json(s.value or "").id for s in await store.load_history(run_id)]
             for run_id in ("a", "b", "c")}
    assert names == {"a": ["e1"], "b": ["e2"], "c": ["e3"]}


async def test_concurrent_accepts_each_get_their_own_results(make_store: StoreFactory,
                                                             fake_clock: FakeClock) -> None:
    sinks = [await make_store() for _ in range(2)]
    for i in range(10):
        await start_waiting(sinks[0], f"r{i}", fake_clock, match={"data.n": i})

    async def post(call: int) -> list[tuple[str, str, tuple[str, ...]]]:
        sink = sinks[call % 2]
        evs = [event(f"e{call % 10}", data={"n": call % 10}), event(f"x{call}")]
        results = await sink.accept_events(NS, evs)
        return [(ev.id, r.outcome.value, r.resumed_runs) for ev, r in zip(evs, results,
                                                                          strict=True)]

    calls = await asyncio.gather(*(post(call) for call in range(40)))
    outcomes = [o for call in calls for o in call]
    for i in range(10):
        mine = [o for o in outcomes if o[0] == f"e{i}"]
        assert sorted(o[1] for o in mine) == ["accepted"] + ["duplicate"] * 3
        assert [o[2] for o in mine if o[1] == "accepted"] == [(f"r{i}",)]
    assert sum(o[1] == "accepted" for o in outcomes if o[0].startswith("x")) == 40
    assert await sinks[0].count_events() == 50


async def test_an_event_after_the_deadline_does_not_resume_the_wait(
    store: Store, fake_clock: FakeClock
) -> None:
    await start_waiting(store, "late", fake_clock, timeout=10)
    await start_waiting(store, "addressed-late", fake_clock, timeout=10)
    fake_clock.advance(11)  # due, not yet claimed by any worker
    [broadcast] = await store.accept_events(NS, [event("late-1")])
    [addressed] = await store.accept_events(NS, [event("late-2", to_run="addressed-late")])
    assert broadcast.resumed_runs == () and addressed.resumed_runs == ()
    for run_id in ("late", "addressed-late"):
        run = await store.get_run(run_id)
        assert run is not None and run.status is RunStatus.WAITING_FOR_EVENT
        assert await store.load_history(run_id) == []
