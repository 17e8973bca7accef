"""Indexed event matching: the wait keys, their JSON types, and rows left behind."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kenning.core.matching import canonical, event_keys, event_matches, wait_keys
from kenning.core.models import RunStatus, StepKind
from kenning.core.store import Store
from tests.conftest import FakeClock
from tests.store.conftest import (
    NS,
    claim_one,
    event,
    event_wait,
    start_claimed,
    start_waiting,
    step,
    wait_on,
)

CountRows = Callable[[str], int]


def test_canonical_values_keep_json_types() -> None:
    assert canonical(1) == canonical(1.0) == "1"
    assert len({canonical(v) for v in (1, "1", True, None, "null", [1], {"a": 1})}) == 7
    assert canonical({"b": 1, "a": [2.0, "x"]}) == '{"a":[2,"x"],"b":1}'
    assert wait_keys(None) == wait_keys({}) == [("", "")]
    assert wait_keys({"region": 1}) == [("region", '"1"')]  # extensions are text
    ev = event("e", data={"n": 1, "deep": {"list": ["a", "b"]}}, subject="s")
    assert event_keys(ev, ["data.n", "data.deep.list.1", "data.absent", "subject", "x", ""]) \
        == [("", ""), ("data.deep.list.1", '"b"'), ("data.n", "1"), ("subject", '"s"')]
    long = "v" * 500
    [(_, digest)] = wait_keys({"data.k": long})
    assert len(digest) < 100 and event_keys(event("e", data={"k": long}), ["data.k"]) \
        == [("data.k", digest)]
    assert event_matches(event("e", data={"n": 1}), {"data.n": 1.0})
    assert not event_matches(event("e", data={"n": "1"}), {"data.n": 1})
    assert not event_matches(event("e", data={"n": True}), {"data.n": 1})


async def test_values_of_different_json_types_differ(store: Store, fake_clock: FakeClock,
                                                     count_rows: CountRows) -> None:
    await start_waiting(store, "int", fake_clock, match={"data.k": 1})
    await start_waiting(store, "str", fake_clock, match={"data.k": "1"})
    await start_waiting(store, "bool", fake_clock, match={"data.k": True})
    await start_waiting(store, "null", fake_clock, match={"data.k": None})
    assert count_rows("wait_keys") == 4
    [r] = await store.accept_events(NS, [event("e1", data={"k": "1"})])
    assert r.resumed_runs == ("str",)
    [r] = await store.accept_events(NS, [event("e2", data={"k": 1.0})])
    assert r.resumed_runs == ("int",)
    [r] = await store.accept_events(NS, [event("e3", data={"k": None})])
    assert r.resumed_runs == ("null",)
    [r] = await store.accept_events(NS, [event("e4", data={"k": True})])
    assert r.resumed_runs == ("bool",)
    assert count_rows("wait_keys") == 0


async def test_absent_paths_match_nothing(store: Store, fake_clock: FakeClock) -> None:
    await start_waiting(store, "data", fake_clock, match={"data.order.id": "A"})
    await start_waiting(store, "subject", fake_clock, match={"subject": "A"})
    await start_waiting(store, "ext", fake_clock, match={"shop": "A"})
    results = await store.accept_events(NS, [
        event("e1"), event("e2", data={"order": "A"}), event("e3", data=["A"]),
        event("e4", data={"order": {"other": "A"}}), event("e5", data={"id": "A"}),
        event("e6", shop="B"), event("e7", subject="B")])
    assert [r.resumed_runs for r in results] == [()] * 7
    [r] = await store.accept_events(NS, [event("e8", data={"order": {"id": "A"}},
                                               subject="A", shop="A")])
    assert sorted(r.resumed_runs) == ["data", "ext", "subject"]


async def test_every_key_of_a_match_must_hold(store: Store, fake_clock: FakeClock) -> None:
    match = {"data.order_id": "A", "subject": "s", "region": "eu"}
    await start_waiting(store, "all", fake_clock, match=match)
    await start_waiting(store, "one", fake_clock, match={"data.order_id": "A"})
    await start_waiting(store, "any", fake_clock)
    await start_waiting(store, "other", fake_clock, "other.type", match={"data.order_id": "A"})
    [r] = await store.accept_events(NS, [event("e1", data={"order_id": "A"}, subject="s")])
    assert sorted(r.resumed_runs) == ["any", "one"]
    # two events in one call, each carrying part of the keys, do not add up to a match
    results = await store.accept_events(NS, [event("e2", data={"order_id": "A"}, region="eu"),
                                             event("e3", subject="s", region="eu")])
    assert [x.resumed_runs for x in results] == [(), ()]
    [r] = await store.accept_events(NS, [event("e4", data={"order_id": "A", "x": 1},
                                               subject="s", region="eu")])
    assert r.resumed_runs == ("all",)
    run = await store.get_run("other")
    assert run is not None and run.status is RunStatus.WAITING_FOR_EVENT


async def test_many_waiting_one_event_wakes_only_its_run(store: Store, fake_clock: FakeClock,
                                                         count_rows: CountRows) -> None:
    for i in range(30):
        await start_waiting(store, f"r{i:02}", fake_clock, match={"data.order_id": f"o{i}"})
    results = await store.accept_events(NS, [event(f"e{i}", data={"order_id": f"o{i}"})
                                             for i in (3, 17, 99)])
    assert [r.resumed_runs for r in results] == [("r03",), ("r17",), ()]
    assert count_rows("wait_keys") == 28
    [r] = await store.accept_events(NS, [event("again", data={"order_id": "o3"})])
    assert r.resumed_runs == ()  # consumed at most once: r03 no longer waits


async def test_runs_that_stop_waiting_leave_no_keys(store: Store, fake_clock: FakeClock,
                                                    count_rows: CountRows) -> None:
    match = {"data.order_id": "A", "subject": "s"}
    await start_waiting(store, "resumed", fake_clock, match=match)
    await start_waiting(store, "cancelled", fake_clock, match=match)
    await start_waiting(store, "timed-out", fake_clock, match=match, timeout=5)
    await start_waiting(store, "unmatched", fake_clock)
    assert count_rows("wait_keys") == 7
    await store.cancel_run("cancelled", "test")
    assert count_rows("wait_keys WHERE run_id = 'cancelled'") == 0
    fake_clock.advance(10)
    claimed = await store.claim_runs("w1", limit=10, lease_seconds=30)
    assert [c.run.run_id for c in claimed] == ["timed-out"]
    assert count_rows("wait_keys WHERE run_id = 'timed-out'") == 0
    late = await store.accept_events(NS, [event("late", data={"order_id": "A"}, subject="s")])
    assert sorted(late[0].resumed_runs) == ["resumed", "unmatched"]
    assert count_rows("wait_keys") == 0
    # the resumed run waits again with other keys, then finishes while waiting elsewhere
    lease = (await claim_one(store, "resumed")).lease
    again = await wait_on(store, lease, event_wait(1, fake_clock, match={"data.n": 2}))
    assert again.consumed is None
    assert count_rows("wait_keys WHERE run_id = 'resumed'") == 1
    [r] = await store.accept_events(NS, [event("n2", data={"n": 2})])
    assert r.resumed_runs == ("resumed",)
    lease = (await claim_one(store, "resumed")).lease
    await store.finish_run(lease, RunStatus.COMPLETED, result="1",
                           steps=[step(2, "done", kind=StepKind.ACTIVITY)])
    assert count_rows("wait_keys") == 0


@pytest.mark.parametrize("lookback", [None, 60.0])
async def test_a_wait_that_consumes_at_once_indexes_nothing(
        store: Store, fake_clock: FakeClock, count_rows: CountRows,
        lookback: float | None) -> None:
    await store.accept_events(NS, [event("kept", data={"k": 1})])
    await store.accept_events(NS, [event("mine", data={"k": 1}, to_run="r1")])
    lease = await start_claimed(store, "r1")
    got = await wait_on(store, lease,
                        event_wait(0, fake_clock, match={"data.k": 1}, lookback=lookback))
    assert got.consumed is not None
    assert count_rows("wait_keys") == 0
