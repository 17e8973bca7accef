"""Continue-as-new: a run closes its chapter (history and input archived) and starts over
under the same id; the ordinal of steps round trips through every write and the archive."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kenning.core.errors import LeaseLost
from kenning.core.models import Chapter, Notification, NotificationKind, RunStatus, StepKind
from kenning.core.store import Store
from tests.conftest import FakeClock
from tests.store.conftest import (
    NS,
    claim_one,
    event,
    event_wait,
    new_run,
    start_claimed,
    step,
)

CountRows = Callable[[str], int]
DAY = 86_400.0


async def test_continue_run_closes_the_chapter_and_starts_over(
        store: Store, fake_clock: FakeClock, notes: list[Notification]) -> None:
    await store.create_run(new_run("r1", input='["first"]'))
    first = await claim_one(store, "r1")
    await store.record_attempts(first.lease, {2: 1})
    await store.append_steps(first.lease, [step(0, ordinal=0), step(1, ordinal=1)])
    fake_clock.advance(1)
    chapter = await store.continue_run(first.lease, '["second"]', [step(2, "last", ordinal=2)])
    assert chapter == 1
    run = await store.get_run("r1")
    assert run is not None
    assert (run.status, run.input, run.chapter) == (RunStatus.PENDING, '["second"]', 1)
    assert (run.lease_owner, run.lease_expires, run.waits, run.activity_attempts) == (
        None, None, (), {})
    assert (run.result, run.error) == (None, None)
    assert Notification(NotificationKind.RUNNABLE, "r1") in notes
    assert await store.load_history("r1") == []
    closed = await store.load_history("r1", chapter=0)
    assert [(s.seq, s.name, s.ordinal) for s in closed] == [(0, "act", 0), (1, "act", 1),
                                                            (2, "last", 2)]
    assert await store.list_chapters("r1") == [Chapter("r1", 0, '["first"]', fake_clock(), 3)]
    # the old lease is gone; a worker claims the new chapter with an empty history
    with pytest.raises(LeaseLost):
        await store.append_steps(first.lease, [step(0)])
    second = await claim_one(store, "r1", "w2")
    assert second.history == [] and second.run.chapter == 1
    assert second.run.input == '["second"]'
    await store.append_steps(second.lease, [step(0, "again", ordinal=0)])
    assert [s.name for s in await store.load_history("r1", chapter=1)] == ["again"]
    fake_clock.advance(1)
    assert await store.continue_run(second.lease, '["third"]') == 2
    third = await claim_one(store, "r1", "w3")
    await store.finish_run(third.lease, RunStatus.COMPLETED, result="3",
                           steps=[step(0, ordinal=0)])
    assert [c.chapter for c in await store.list_chapters("r1")] == [0, 1]
    assert [c.steps for c in await store.list_chapters("r1")] == [3, 1]
    assert [s.name for s in await store.load_history("r1", chapter=1)] == ["again"]
    assert [s.seq for s in await store.load_history("r1", chapter=2)] == [0]  # the current
    assert await store.load_history("r1", chapter=7) == []
    assert await store.list_chapters("nobody") == []


async def test_continue_run_is_fenced(store: Store, fake_clock: FakeClock) -> None:
    lease = await start_claimed(store, "r1", lease_seconds=5)
    await store.append_steps(lease, [step(0)])
    fake_clock.advance(6)
    taken = await claim_one(store, "r1", "w2")
    with pytest.raises(LeaseLost):
        await store.continue_run(lease, '["new"]', [step(1)])
    run = await store.get_run("r1")
    assert run is not None and run.status is RunStatus.RUNNING and run.chapter == 0
    assert run.input == "[]" and run.lease_owner == "w2"
    assert [s.seq for s in await store.load_history("r1")] == [0]
    assert await store.list_chapters("r1") == []
    # a cancelled run does not continue either
    await store.cancel_run("r1", "stop")
    with pytest.raises(LeaseLost):
        await store.continue_run(taken.lease, '["new"]')
    assert await store.list_chapters("r1") == []
    assert (await store.get_run("r1")).status is RunStatus.CANCELLED  # type: ignore[union-attr]


async def test_a_continued_run_keeps_its_inbox_and_consumptions(
        store: Store, fake_clock: FakeClock) -> None:
    lease = await start_claimed(store, "r1")
    await store.accept_events(NS, [event("e1", to_run="r1"), event("e2", to_run="r1")])
    got = await store.begin_waits(lease, [event_wait(0, fake_clock)], next_ordinal=0)
    assert got.consumed is not None
    await store.continue_run(lease, "[]")
    again = await claim_one(store, "r1")
    # the new chapter takes the event not yet consumed, not the one the old chapter took
    taken = await store.begin_waits(again.lease, [event_wait(0, fake_clock)], next_ordinal=0)
    assert taken.consumed is not None and '"e2"' in (taken.consumed.value or "")
    last = await store.begin_waits(again.lease, [event_wait(1, fake_clock)], next_ordinal=1)
    assert last.consumed is None


async def test_ordinals_round_trip_through_every_write(store: Store,
                                                       fake_clock: FakeClock) -> None:
    lease = await start_claimed(store, "r1")
    await store.append_steps(lease, [step(0, ordinal=1), step(1, ordinal=0)])
    await store.begin_waits(lease, [event_wait(3, fake_clock, "x")],
                            [step(2, "patch", None, kind=StepKind.PATCH)], next_ordinal=2)
    await store.accept_events(NS, [event("e1", "x")])
    claimed = await claim_one(store, "r1")
    assert [(s.seq, s.ordinal, s.delivered_at) for s in claimed.history] == [
        (0, 1, 1), (1, 0, 0), (2, None, 2), (3, 2, 2)]
    await store.finish_run(claimed.lease, RunStatus.COMPLETED, result="1",
                           steps=[step(4, ordinal=3)])
    assert [s.ordinal for s in await store.load_history("r1")] == [1, 0, None, 2, 3]


async def test_closed_chapters_are_purged_after_the_retention(
        store: Store, fake_clock: FakeClock, count_rows: CountRows) -> None:
    await store.set_finished_retention("forever", 0)
    for run_id, namespace in (("long", NS), ("kept", "forever"), ("done", NS)):
        lease = await start_claimed(store, run_id, namespace=namespace)
        await store.append_steps(lease, [step(0), step(1)])
        await store.continue_run(lease, "[]")
    done = await claim_one(store, "done")
    await store.finish_run(done.lease, RunStatus.COMPLETED, result="1", steps=[step(0)])
    await store.accept_events(NS, [event("inbox", to_run="done")])
    fake_clock.advance(10 * DAY)
    again = await claim_one(store, "long")
    await store.append_steps(again.lease, [step(0)])
    await store.continue_run(again.lease, "[]")  # a second chapter, younger
    assert count_rows("history_chapters") == 7
    fake_clock.advance(21 * DAY)  # the first chapters are 31 days old
    assert await store.purge_finished() == 1  # "done" itself, with all its chapters
    assert await store.get_run("done") is None
    assert count_rows("history_chapters WHERE run_id = 'done'") == 0
    assert count_rows("events WHERE target_run = 'done'") == 0  # its inbox went with it
    assert [c.chapter for c in await store.list_chapters("long")] == [1]
    assert await store.load_history("long", chapter=0) == []
    assert len(await store.load_history("long", chapter=1)) == 1
    assert [c.chapter for c in await store.list_chapters("kept")] == [0]  # 0 keeps forever
    run = await store.get_run("long")
    assert run is not None and run.status is RunStatus.PENDING and run.chapter == 2
    # by hand, with a date: the chapters closed before it
    assert await store.purge_finished(before=fake_clock() + 1, namespace="forever") == 0
    assert await store.list_chapters("kept") == []


async def test_a_chapter_purge_goes_in_batches(store: Store, fake_clock: FakeClock) -> None:
    lease = await start_claimed(store, "r1")
    for _ in range(5):
        await store.continue_run(lease, "[]")
        lease = (await claim_one(store, "r1")).lease
    fake_clock.advance(31 * DAY)
    assert await store.purge_finished(limit=2) == 0
    assert [c.chapter for c in await store.list_chapters("r1")] == [2, 3, 4]
    await store.purge_finished(limit=10)
    assert await store.list_chapters("r1") == []
