"""Creating, reading, listing and cancelling runs."""

from __future__ import annotations

import pytest

from kenning.core.errors import LeaseLost, RunNotFound
from kenning.core.models import NewRun, RunStatus
from kenning.core.store import Store
from tests.conftest import FakeClock
from tests.store.conftest import (
    NS,
    event,
    new_run,
    start_claimed,
    start_waiting,
    step,
)


async def test_create_is_idempotent(store: Store, fake_clock: FakeClock) -> None:
    run, created = await store.create_run(
        NewRun("r1", NS, "wf", '[1, {"a": 2}]', pool="p", labels={"team": "x"}))
    assert created
    assert (run.run_id, run.namespace, run.workflow, run.input) == ("r1", NS, "wf",
                                                                     '[1, {"a": 2}]')
    assert run.status is RunStatus.PENDING
    assert (run.pool, run.labels, run.epoch) == ("p", {"team": "x"}, 0)
    assert run.created_at == fake_clock()
    fake_clock.advance(5)
    again, created_again = await store.create_run(NewRun("r1", "other", "wf2", "[9]"))
    assert not created_again
    assert again == run


async def test_get_run_and_missing(store: Store) -> None:
    assert await store.get_run("nope") is None
    await store.create_run(new_run("r1"))
    run = await store.get_run("r1")
    assert run is not None and run.run_id == "r1"


async def test_list_runs_filters_newest_first(store: Store, fake_clock: FakeClock) -> None:
    for i, (ns, wf) in enumerate([("a", "w1"), ("a", "w2"), ("b", "w1"), ("a", "w1")]):
        await store.create_run(new_run(f"r{i}", namespace=ns, workflow=wf))
        fake_clock.advance(1)
    await start_claimed(store, "r9")  # created last, running
    ids = [r.run_id for r in await store.list_runs()]
    assert ids == ["r9", "r3", "r2", "r1", "r0"]
    assert [r.run_id for r in await store.list_runs(namespace="a")] == ["r3", "r1", "r0"]
    assert [r.run_id for r in await store.list_runs(workflow="w1")] == ["r3", "r2", "r0"]
    assert [r.run_id for r in await store.list_runs(namespace="a", workflow="w1")] == ["r3",
                                                                                      "r0"]
    assert [r.run_id for r in await store.list_runs(status=RunStatus.RUNNING)] == ["r9"]
    assert [r.run_id for r in await store.list_runs(status=RunStatus.PENDING, namespace="b",
                                                    workflow="w1")] == ["r2"]
    assert [r.run_id for r in await store.list_runs(limit=2)] == ["r9", "r3"]


async def test_load_history_in_order(store: Store) -> None:
    lease = await start_claimed(store, "r1")
    await store.append_steps(lease, [step(0, "a", "1"), step(1, "b", None)])
    await store.append_steps(lease, [step(2, "c", '"x"', at=7.5)])
    history = await store.load_history("r1")
    assert [(s.seq, s.name, s.value) for s in history] == [(0, "a", "1"), (1, "b", None),
                                                            (2, "c", '"x"')]
    assert history[2].recorded_at == 7.5
    assert await store.load_history("unknown") == []


async def test_cancel_pending_run(store: Store, fake_clock: FakeClock) -> None:
    await store.create_run(new_run("r1"))
    fake_clock.advance(3)
    run = await store.cancel_run("r1", "no longer needed")
    assert run.status is RunStatus.CANCELLED
    assert run.error == "no longer needed"
    assert run.finished_at == fake_clock()
    assert await store.claim_runs("w1", limit=10, lease_seconds=30) == []


async def test_cancel_fences_out_the_worker(store: Store) -> None:
    lease = await start_claimed(store, "r1")
    run = await store.cancel_run("r1", "stop")
    assert run.status is RunStatus.CANCELLED and run.lease_owner is None
    assert run.epoch == lease.epoch + 1
    with pytest.raises(LeaseLost):
        await store.append_steps(lease, [step(0)])
    assert await store.load_history("r1") == []
    assert (await store.get_run("r1")) == run


async def test_cancel_waiting_run_clears_its_wait(store: Store, fake_clock: FakeClock) -> None:
    await start_waiting(store, "r1", fake_clock)
    run = await store.cancel_run("r1", "stop")
    assert run.status is RunStatus.CANCELLED and run.wait is None
    result = (await store.accept_events(NS, [event("e1")]))[0]
    assert result.resumed_runs == ()
    assert (await store.get_run("r1")) == run
    assert [s.kind for s in await store.load_history("r1")] == []
    assert await store.count_events() == 1  # kept for others


async def test_cancel_finished_run_returns_it_unchanged(store: Store) -> None:
    lease = await start_claimed(store, "r1")
    await store.finish_run(lease, RunStatus.COMPLETED, result="42")
    done = await store.get_run("r1")
    assert await store.cancel_run("r1", "too late") == done


async def test_cancel_unknown_run(store: Store) -> None:
    with pytest.raises(RunNotFound):
        await store.cancel_run("ghost", "why")
