"""Listeners hear about each committed change, after the commit, and nothing else."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kenning.core.errors import LeaseLost
from kenning.core.models import Notification, NotificationKind, RunStatus
from kenning.core.store import Store
from tests.conftest import FakeClock
from tests.store.conftest import (
    NS,
    claim_one,
    event,
    event_wait,
    new_run,
    start_claimed,
    start_waiting,
    step,
    timer_wait,
    wait_on,
)

RUNNABLE, TIMER, FINISHED, CANCELLED, OUTBOX = (
    NotificationKind.RUNNABLE, NotificationKind.TIMER, NotificationKind.FINISHED,
    NotificationKind.CANCELLED, NotificationKind.OUTBOX)


def kinds(notes: list[Notification]) -> list[tuple[str, str | None, float | None]]:
    """The notifications as comparable tuples, then forgotten."""
    seen = [(n.kind.value, n.run_id, n.wake_at) for n in notes]
    notes.clear()
    return seen


async def test_run_lifecycle_notifications(store: Store, notes: list[Notification],
                                           fake_clock: FakeClock) -> None:
    await store.create_run(new_run("r1"))
    await store.create_run(new_run("r1"))  # already there: nothing changed
    assert kinds(notes) == [("runnable", "r1", None)]

    lease = (await claim_one(store, "r1")).lease
    assert kinds(notes) == [("claimed", "r1", None)]
    await store.renew_leases("w1", ["r1"], 30)
    await store.append_steps(lease, [step(0)])
    assert kinds(notes) == []

    await store.append_steps(lease, [step(1)], [event("o1")])
    assert kinds(notes) == [("outbox", "r1", None)]

    wake = fake_clock() + 5
    await wait_on(store, lease, timer_wait(2, wake))
    assert kinds(notes) == [("timer", "r1", wake)]

    fake_clock.advance(5)
    lease = (await claim_one(store, "r1")).lease
    await store.release_run(lease)
    assert kinds(notes) == [("claimed", "r1", None), ("runnable", "r1", None)]

    lease = (await claim_one(store, "r1")).lease
    await store.finish_run(lease, RunStatus.COMPLETED, result="1")
    assert kinds(notes) == [("claimed", "r1", None), ("finished", "r1", None)]
    await store.cancel_run("r1", "late")
    assert kinds(notes) == []


async def test_event_wait_notifications(store: Store, notes: list[Notification],
                                        fake_clock: FakeClock) -> None:
    lease = await start_claimed(store, "r1")
    kinds(notes)
    wait = event_wait(0, fake_clock, timeout=60)
    await wait_on(store, lease, wait)
    assert kinds(notes) == [("timer", "r1", wait.wake_at)]
    await start_waiting(store, "r2", fake_clock)  # no timeout: no timer
    assert kinds(notes) == [("runnable", "r2", None), ("claimed", "r2", None),
                            ("waiting", "r2", None)]

    await store.accept_events(NS, [event("e0", "nobody.waits")])
    assert kinds(notes) == []
    await store.accept_events(NS, [event("e1")])
    assert sorted(kinds(notes)) == [("runnable", "r1", None), ("runnable", "r2", None)]

    lease = (await claim_one(store, "r1")).lease
    await store.accept_events(NS, [event("e2", to_run="r1")])
    assert kinds(notes) == [("claimed", "r1", None)]
    await wait_on(store, lease, event_wait(1, fake_clock))  # consumes e2 at once
    assert kinds(notes) == []


async def test_cancel_and_lost_leases(store: Store, notes: list[Notification]) -> None:
    lease = await start_claimed(store, "r1")
    kinds(notes)
    await store.cancel_run("r1", "stop")
    assert kinds(notes) == [("cancelled", "r1", None), ("finished", "r1", None)]
    with pytest.raises(LeaseLost):
        await store.finish_run(lease, RunStatus.COMPLETED, result="1")
    await store.release_run(lease)
    assert kinds(notes) == []


async def test_unsubscribe(store: Store) -> None:
    heard: list[Notification] = []
    unsubscribe = store.subscribe(heard.append)
    await store.create_run(new_run("r1"))
    unsubscribe()
    unsubscribe()
    await store.create_run(new_run("r2"))
    assert [n.run_id for n in heard] == ["r1"]


async def test_a_failing_listener_does_not_stop_the_others(store: Store) -> None:
    def broken(note: Notification) -> None:
        raise RuntimeError("listener bug")

    heard: list[Notification] = []
    store.subscribe(broken)
    store.subscribe(heard.append)
    await store.create_run(new_run("r1"))
    assert [n.run_id for n in heard] == ["r1"]


async def test_notifications_follow_the_commit(store: Store, fake_clock: FakeClock,
                                               read_status: Callable[[str], str | None]) -> None:
    seen: list[tuple[str, str | None]] = []

    def check(note: Notification) -> None:
        assert note.run_id is not None
        seen.append((note.kind.value, read_status(note.run_id)))

    store.subscribe(check)
    await store.create_run(new_run("r1"))
    lease = (await claim_one(store, "r1")).lease
    await wait_on(store, lease, event_wait(0, fake_clock, timeout=5))
    await store.accept_events(NS, [event("e1")])
    lease = (await claim_one(store, "r1")).lease
    await store.finish_run(lease, RunStatus.COMPLETED, result="1")
    assert seen == [("runnable", "pending"), ("claimed", "running"),
                    ("timer", "waiting_for_event"), ("runnable", "pending"),
                    ("claimed", "running"), ("finished", "completed")]
