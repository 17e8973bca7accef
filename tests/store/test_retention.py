"""Retention: finished runs and their history are purged after their namespace's period."""

from __future__ import annotations

from collections.abc import Callable

from kenning.core.models import RunStatus
from kenning.core.store import Store
from kenning.runtime.retention import purge_finished_runs
from tests.conftest import FakeClock
from tests.store.conftest import (
    NS,
    event,
    new_run,
    start_claimed,
    start_waiting,
    step,
    timer_wait,
    wait_on,
)

DAY = 86_400.0
CountRows = Callable[[str], int]


async def finished(store: Store, run_id: str, namespace: str = NS,
                   status: RunStatus = RunStatus.COMPLETED) -> None:
    """A run that recorded two steps and finished."""
    lease = await start_claimed(store, run_id, namespace=namespace)
    await store.finish_run(lease, status, result="1", steps=[step(0), step(1)])


async def test_only_finished_runs_past_retention_are_purged(
        store: Store, fake_clock: FakeClock, count_rows: CountRows) -> None:
    await finished(store, "done")
    await finished(store, "failed", status=RunStatus.FAILED)
    await store.create_run(new_run("cancelled"))
    await store.cancel_run("cancelled", "test")
    waiting = {"data.order_id": "A"}
    await start_waiting(store, "waiting", fake_clock, match=waiting)
    await start_waiting(store, "resumed", fake_clock, match=waiting, timeout=DAY * 400)
    await store.accept_events(NS, [event("e1", data={"order_id": "A"})])  # resumes both
    await start_waiting(store, "still", fake_clock, match={"data.order_id": "B"})
    lease = await start_claimed(store, "timer")
    await wait_on(store, lease, timer_wait(1, fake_clock() + 400 * DAY), [step(0)])
    await store.create_run(new_run("pending"))
    await start_claimed(store, "running", lease_seconds=1000 * DAY)
    events = await store.count_events()
    assert await store.finished_retention(NS) == 30 * DAY

    fake_clock.advance(29 * DAY)
    assert await store.purge_finished() == 0
    fake_clock.advance(2 * DAY)
    assert await store.purge_finished() == 3
    for run_id in ("done", "failed", "cancelled"):
        assert await store.get_run(run_id) is None
        assert await store.load_history(run_id) == []
    for run_id in ("waiting", "resumed", "still", "timer", "pending", "running"):
        run = await store.get_run(run_id)
        assert run is not None and not run.status.finished, run_id
    assert len(await store.load_history("timer")) == 1
    assert count_rows("wait_keys WHERE run_id = 'still'") == 1
    assert count_rows("consumptions") == 2  # the resumed runs are not finished
    assert await store.count_events() == events  # kept events have their own retention
    assert await store.purge_finished(before=fake_clock() + DAY) == 0


async def test_retention_is_per_namespace(store: Store, fake_clock: FakeClock,
                                          count_rows: CountRows) -> None:
    await store.set_finished_retention("keep", 0)
    await store.set_finished_retention("short", 3600)
    await store.set_finished_retention("short", 7200)  # set again: replaced
    for namespace in (NS, "keep", "short"):
        await finished(store, f"{namespace}-1", namespace)
    assert await store.finished_retention("keep") == 0
    assert await store.finished_retention("short") == 7200
    assert await store.finished_retention("other") == 30 * DAY
    fake_clock.advance(7300)
    assert await store.purge_finished() == 1
    assert await store.get_run("short-1") is None
    fake_clock.advance(400 * DAY)
    assert await store.purge_finished() == 1
    assert await store.get_run(f"{NS}-1") is None
    assert await store.get_run("keep-1") is not None  # 0 keeps them forever
    assert count_rows("history WHERE run_id = 'keep-1'") == 2
    # by hand: a date purges whatever finished before it, whatever the retention
    assert await store.purge_finished(before=fake_clock(), namespace="elsewhere") == 0
    assert await store.purge_finished(before=fake_clock(), namespace="keep") == 1


async def test_purge_goes_in_batches(store: Store, fake_clock: FakeClock) -> None:
    for i in range(7):
        await finished(store, f"r{i}", NS if i < 5 else "b")
        fake_clock.advance(1)
    cutoff = fake_clock()
    await finished(store, "later")
    assert await store.purge_finished(before=cutoff, limit=3) == 3
    # namespace by namespace ("b" first), oldest first within each
    assert [r.run_id for r in await store.list_runs(limit=10)] == ["later", "r4", "r3", "r2",
                                                                    "r1"]
    assert await purge_finished_runs(store, before=cutoff, batch=2) == 4
    assert [r.run_id for r in await store.list_runs(limit=10)] == ["later"]
