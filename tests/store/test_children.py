"""Child runs: started with the step that records them, their end told to the parent by an
addressed ``CHILD_FINISHED_TYPE`` event (resuming it if it waits), cancelled with it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest

from kenning.core.errors import LeaseLost
from kenning.core.events import record_from_json
from kenning.core.models import (
    CHILD_FINISHED_TYPE,
    TARGET_RUN_EXTENSION,
    Lease,
    NewRun,
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
    event_wait,
    new_run,
    start_claimed,
    step,
)

CountRows = Callable[[str], int]
DAY = 86_400.0


def child_wait(seq: int, clock: FakeClock, child: str) -> Wait:
    """Waiting for one child's end."""
    return Wait(seq=seq, kind=WaitKind.EVENT, event_type=CHILD_FINISHED_TYPE,
                match={"subject": child}, started_at=clock())


def child_step(seq: int, child: str) -> list[Step]:
    """The step that records a child's start."""
    return [step(seq, "child_wf", json.dumps({"run_id": child}), kind=StepKind.CHILD)]


async def start_children(store: Store, parent: str, *children: str,
                         namespace: str = NS) -> Lease:
    """Create and claim ``parent``; start ``children`` with its first steps."""
    lease = await start_claimed(store, parent, namespace=namespace)
    for seq, child in enumerate(children):
        await store.append_steps(lease, child_step(seq, child),
                                 children=[new_run(child, namespace=namespace)])
    return lease


async def test_append_steps_creates_children_in_the_same_commit(
        store: Store, notes: list[Notification]) -> None:
    await store.create_run(new_run("taken", input='["mine"]'))
    lease = await start_claimed(store, "p")
    await store.append_steps(lease, child_step(0, "c1") + child_step(1, "c2"), children=[
        new_run("c1", input='["one"]'), NewRun("c2", NS, "other_wf", "[]", parent_run_id="p"),
        new_run("taken", input='["theirs"]')])
    for child, workflow in (("c1", "wf"), ("c2", "other_wf")):
        run = await store.get_run(child)
        assert run is not None and run.status is RunStatus.PENDING
        assert (run.parent_run_id, run.workflow) == ("p", workflow)
        assert Notification(NotificationKind.RUNNABLE, child) in notes
    untouched = await store.get_run("taken")  # an existing id is left as it is
    assert untouched is not None and untouched.parent_run_id is None
    assert untouched.input == '["mine"]'
    assert [r.run_id for r in await store.list_runs(parent="p")] == ["c1", "c2"]  # one time
    assert await store.list_runs(parent="c1") == []
    assert [s.seq for s in await store.load_history("p")] == [0, 1]
    parent = await store.get_run("p")
    assert parent is not None and parent.parent_run_id is None
    # a stale lease starts no child
    await store.cancel_run("p", "stop")
    with pytest.raises(LeaseLost):
        await store.append_steps(lease, child_step(2, "c3"), children=[new_run("c3")])
    assert await store.get_run("c3") is None
    # runs created directly may name their parent too
    made, _ = await store.create_run(NewRun("c4", NS, "wf", "[]", parent_run_id="p"))
    assert made.parent_run_id == "p"
    assert await store.create_runs([NewRun("c5", NS, "wf", "[]", parent_run_id="p")]) == [
        (True, "wf")]
    assert {r.run_id for r in await store.list_runs(parent="p")} == {"c1", "c2", "c4", "c5"}


async def test_a_child_ending_resumes_its_waiting_parent(
        store: Store, fake_clock: FakeClock, notes: list[Notification]) -> None:
    lease = await start_children(store, "p", "c1", "c2")
    waits = [child_wait(2, fake_clock, "c1"), child_wait(3, fake_clock, "c2")]
    result = await store.begin_waits(lease, waits, next_ordinal=2)
    assert result.consumed is None
    fake_clock.advance(5)
    child = await claim_one(store, "c2", "w2")
    await store.finish_run(child.lease, RunStatus.COMPLETED, result='{"total": 3}',
                           steps=[step(0)])
    parent = await store.get_run("p")
    assert parent is not None and parent.status is RunStatus.PENDING and parent.waits == ()
    assert Notification(NotificationKind.RUNNABLE, "p") in notes
    assert Notification(NotificationKind.FINISHED, "c2") in notes
    recorded = (await store.load_history("p"))[-1]
    assert (recorded.seq, recorded.kind, recorded.name, recorded.ordinal) == (
        3, StepKind.EVENT, CHILD_FINISHED_TYPE, 2)
    assert recorded.recorded_at == fake_clock()
    record = record_from_json(recorded.value or "")
    assert (record.type, record.source, record.id, record.subject) == (
        CHILD_FINISHED_TYPE, f"/kenning/{NS}/runs/c2", "c2/finished/0", "c2")
    assert record.extensions == {TARGET_RUN_EXTENSION: "p"}
    assert json.loads(record.data or "") == {"run_id": "c2", "status": "completed",
                                              "result": {"total": 3}, "error": None}
    # the other child fails while the parent is not waiting: its event waits in the inbox
    again = await claim_one(store, "p")
    other = await claim_one(store, "c1", "w2")
    await store.finish_run(other.lease, RunStatus.FAILED, error="ValueError: no")
    taken = await store.begin_waits(again.lease, [child_wait(4, fake_clock, "c1")],
                                    next_ordinal=3)
    assert taken.consumed is not None and taken.consumed.seq == 4
    data = json.loads(record_from_json(taken.consumed.value or "").data or "")
    assert data == {"run_id": "c1", "status": "failed", "result": None,
                    "error": "ValueError: no"}


async def test_a_child_finished_before_its_parent_waits_is_consumed_later(
        store: Store, fake_clock: FakeClock) -> None:
    lease = await start_children(store, "p", "c1")
    child = await claim_one(store, "c1", "w2")
    await store.finish_run(child.lease, RunStatus.COMPLETED, result="7")
    parent = await store.get_run("p")
    assert parent is not None and parent.status is RunStatus.RUNNING  # not waiting: kept
    # however long the parent takes: the event outlives the event retention
    fake_clock.advance(3 * DAY)
    await store.purge_expired()
    result = await store.begin_waits(lease, [event_wait(1, fake_clock, "other"),
                                             child_wait(2, fake_clock, "c1")], next_ordinal=1)
    assert result.consumed is not None
    assert (result.consumed.seq, result.consumed.name, result.consumed.ordinal) == (
        2, CHILD_FINISHED_TYPE, 1)
    assert json.loads(record_from_json(result.consumed.value or "").data or "")["result"] == 7
    run = await store.get_run("p")
    assert run is not None and run.status is RunStatus.RUNNING and run.lease_owner == "w1"
    # consumed once: a second wait for it suspends
    second = await store.begin_waits(lease, [child_wait(3, fake_clock, "c1")], next_ordinal=2)
    assert second.consumed is None


async def test_a_parent_waiting_for_something_else_keeps_the_event(
        store: Store, fake_clock: FakeClock) -> None:
    lease = await start_children(store, "p", "c1")
    await store.begin_waits(lease, [event_wait(1, fake_clock, "approval", timeout=60)],
                            next_ordinal=1)
    child = await claim_one(store, "c1", "w2")
    await store.finish_run(child.lease, RunStatus.COMPLETED, result="1")
    parent = await store.get_run("p")
    assert parent is not None and parent.status is RunStatus.WAITING_FOR_EVENT
    assert await store.load_history("p") == child_step(0, "c1")
    fake_clock.advance(60)  # the approval times out; the worker goes on and waits for c1
    again = await claim_one(store, "p")
    await store.append_steps(again.lease, [step(1, "approval", None, kind=StepKind.TIMEOUT)])
    result = await store.begin_waits(again.lease, [child_wait(2, fake_clock, "c1")],
                                     next_ordinal=2)
    assert result.consumed is not None and result.consumed.seq == 2


async def test_a_child_whose_parent_is_gone_ends_quietly(store: Store) -> None:
    await store.create_run(NewRun("orphan", NS, "wf", "[]", parent_run_id="nobody"))
    child = await claim_one(store, "orphan")
    await store.finish_run(child.lease, RunStatus.COMPLETED, result="1")
    run = await store.get_run("orphan")
    assert run is not None and run.status is RunStatus.COMPLETED
    assert (await store.cancel_run("orphan", "late")).status is RunStatus.COMPLETED


async def test_cancelling_a_run_cancels_its_descendants_and_tells_each_parent(
        store: Store, fake_clock: FakeClock, notes: list[Notification]) -> None:
    root = await start_children(store, "root", "p")
    await store.begin_waits(root, [child_wait(1, fake_clock, "p")], next_ordinal=1)
    p = (await claim_one(store, "p", "w2")).lease
    for seq, child in enumerate(("c1", "c2")):
        await store.append_steps(p, child_step(seq, child), children=[new_run(child)])
    c1 = (await claim_one(store, "c1", "w3")).lease
    await store.append_steps(c1, child_step(0, "g1"), children=[new_run("g1")])
    await store.begin_waits(c1, [child_wait(1, fake_clock, "g1")], next_ordinal=1)
    c2 = (await claim_one(store, "c2", "w4")).lease
    await store.finish_run(c2, RunStatus.COMPLETED, result="2")
    fake_clock.advance(1)

    cancelled = await store.cancel_run("p", "no longer needed")
    assert cancelled.status is RunStatus.CANCELLED and cancelled.error == "no longer needed"
    for run_id in ("c1", "g1"):
        run = await store.get_run(run_id)
        assert run is not None and run.status is RunStatus.CANCELLED, run_id
        assert run.error is not None and "no longer needed" in run.error
        assert Notification(NotificationKind.CANCELLED, run_id) in notes
        assert Notification(NotificationKind.FINISHED, run_id) in notes
    done = await store.get_run("c2")
    assert done is not None and done.status is RunStatus.COMPLETED  # finished: untouched
    with pytest.raises(LeaseLost):  # the child's worker is fenced out
        await store.append_steps(c1, [step(2)])
    # the cancelled child's parent, waiting for it, is resumed with its end
    parent = await store.get_run("root")
    assert parent is not None and parent.status is RunStatus.PENDING
    recorded = (await store.load_history("root"))[-1]
    assert (recorded.seq, recorded.ordinal) == (1, 1)
    data = json.loads(record_from_json(recorded.value or "").data or "")
    assert data == {"run_id": "p", "status": "cancelled", "result": None,
                    "error": "no longer needed"}
    # cancelling again changes nothing; a finished run is returned as it is
    assert (await store.cancel_run("p", "again")).error == "no longer needed"
    assert (await store.cancel_run("c2", "late")).status is RunStatus.COMPLETED


async def test_each_cancelled_descendant_addresses_its_parent(
        store: Store, fake_clock: FakeClock, count_rows: CountRows) -> None:
    p = await start_children(store, "p", "c1")
    c1 = (await claim_one(store, "c1", "w2")).lease
    await store.append_steps(c1, child_step(0, "g1"), children=[new_run("g1")])
    await store.cancel_run("p", "stop")
    # g1 told c1, c1 told p (p itself has no parent)
    assert count_rows(f"events WHERE type = '{CHILD_FINISHED_TYPE}'") == 2
    for parent, child in (("c1", "g1"), ("p", "c1")):
        assert count_rows(f"events WHERE target_run = '{parent}'"
                          f" AND id = '{child}/finished/0'") == 1
    with pytest.raises(LeaseLost):
        await store.append_steps(p, [step(1)])


async def test_no_child_end_is_lost_while_the_parent_begins_to_wait(
        make_store: StoreFactory, fake_clock: FakeClock) -> None:
    """Children ending (on another store) while their parents begin to wait for them: each
    parent gets its child's end exactly once, consumed or resumed."""
    worker, other = await make_store(), await make_store()
    count = 30
    parents = [await start_children(worker, f"p{i:02}", f"c{i:02}") for i in range(count)]
    children = [(await claim_one(other, f"c{i:02}", "w2")).lease for i in range(count)]

    async def wait(i: int) -> bool:
        await asyncio.sleep(0.001 * (i % 7))
        got = await worker.begin_waits(parents[i], [child_wait(1, fake_clock, f"c{i:02}")],
                                       next_ordinal=1)
        return got.consumed is not None

    async def finish(i: int) -> None:
        await asyncio.sleep(0.001 * (i % 5))
        await other.finish_run(children[i], RunStatus.COMPLETED, result=str(i))

    outcomes = await asyncio.gather(*(wait(i) for i in range(count)),
                                    *(finish(i) for i in range(count)))
    for i in range(count):
        run = await worker.get_run(f"p{i:02}")
        assert run is not None
        expected = RunStatus.RUNNING if outcomes[i] else RunStatus.PENDING
        assert run.status is expected, (i, run.status, outcomes[i])
        history = await worker.load_history(f"p{i:02}")
        assert [s.seq for s in history] == [0, 1]
        data = json.loads(record_from_json(history[1].value or "").data or "")
        assert data["result"] == i
