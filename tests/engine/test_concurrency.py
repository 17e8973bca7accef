"""Plain asyncio concurrency inside workflows: gather, wait, wait_for, create_task, TaskGroup.

Every test runs on SQLite and PostgreSQL, and each suspends its run at least once, so the
code is also replayed from history in a fresh execution (kill tests: tests/e2e).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from kenning import RetryPolicy, RunStatus, WorkflowContext, activity, sleep, wait_event, workflow
from kenning.core.models import StepKind, WaitKind
from tests.conftest import wait_status

from .conftest import AppFactory

CALLS: list[str] = []


@activity
async def step(ctx: WorkflowContext, name: str, delay: float = 0.0) -> str:
    CALLS.append(name)
    await asyncio.sleep(delay)
    return name


async def _branch(ctx: WorkflowContext, name: str, first_delay: float) -> list[str]:
    first = await step(ctx, f"{name}1", first_delay)
    second = await step(ctx, f"{name}2")
    return [first, second]


@workflow
async def fan_out(ctx: WorkflowContext) -> list[Any]:
    # branch a's first activity is slow: b's steps finish first, out of issue order
    both = await asyncio.gather(_branch(ctx, "a", 0.3), _branch(ctx, "b", 0.0))
    await sleep(ctx, 0.2)  # suspend: the resumed run replays everything above
    last = await step(ctx, "after")
    return [*both, last]


async def test_gather_of_branches_replays_in_recorded_order(make_app: AppFactory) -> None:
    CALLS.clear()
    async with make_app([fan_out]) as app:
        run_id = await app.start(fan_out)
        assert await app.result(run_id, timeout=20) == [["a1", "a2"], ["b1", "b2"], "after"]
        history = await app.history(run_id)
    assert sorted(CALLS) == ["a1", "a2", "after", "b1", "b2"]  # each ran once
    by_seq = {s.seq: s for s in history}
    # issued in code order: a1, b1 (both branches start), then b2 (b1 ended first), a2
    assert [by_seq[i].name for i in range(4)] == ["step", "step", "step", "step"]
    ordinals = [s.ordinal for s in sorted(history, key=lambda s: s.seq) if s.ordinal is not None]
    assert len(ordinals) == len(set(ordinals))  # one delivery position each


@workflow
async def race_timer_and_event(ctx: WorkflowContext) -> str:
    timer = asyncio.ensure_future(sleep(ctx, 0.3))
    event = asyncio.ensure_future(wait_event(ctx, "never.sent"))
    done, pending = await asyncio.wait([timer, event], return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    return "timer" if timer in done else "event"


async def test_a_timer_beats_an_event_that_never_comes(make_app: AppFactory,
                                                       caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    caplog.set_level(logging.ERROR)
    async with make_app([race_timer_and_event]) as app:
        run_id = await app.start(race_timer_and_event)
        await wait_status(app, run_id, RunStatus.WAITING_FOR_EVENT)
        run = await app.store.get_run(run_id)
        assert run is not None
        assert sorted(w.kind for w in run.waits) == [WaitKind.EVENT, WaitKind.TIMER]
        info = await app.get_run(run_id)
        assert [w.kind for w in info.waiting_for] == ["timer", "event"]
        assert await app.result(run_id, timeout=10) == "timer"
        history = await app.history(run_id)
    kinds = {s.seq: s.kind for s in history}
    assert kinds == {0: StepKind.TIMER, 1: StepKind.CANCELLED}
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]


async def test_an_event_beats_a_timer(make_app: AppFactory) -> None:
    @workflow(name="race_event_first")
    async def race(ctx: WorkflowContext) -> str:
        timer = asyncio.ensure_future(sleep(ctx, 3600))
        event = asyncio.ensure_future(wait_event(ctx, "approval.given"))
        done, _ = await asyncio.wait([timer, event], return_when=asyncio.FIRST_COMPLETED)
        timer.cancel()
        return (await event).type if event in done else "timer"

    async with make_app([race]) as app:
        run_id = await app.start(race)
        await wait_status(app, run_id, RunStatus.WAITING_FOR_EVENT)
        await app.publish("approval.given", {}, to_run=run_id)
        assert await app.result(run_id, timeout=10) == "approval.given"
        run = await app.store.get_run(run_id)
        history = await app.history(run_id)
    assert run is not None and run.waits == ()
    assert {s.seq: s.kind for s in history} == {0: StepKind.CANCELLED, 1: StepKind.EVENT}


@workflow
async def deadline_on_event(ctx: WorkflowContext) -> str:
    try:
        event = await asyncio.wait_for(wait_event(ctx, "reply.sent"), timeout=0.3)
    except TimeoutError:
        return "deadline"
    return event.type


async def test_wait_for_puts_a_durable_deadline_on_a_wait(make_app: AppFactory) -> None:
    async with make_app([deadline_on_event]) as app:
        run_id = await app.start(deadline_on_event)
        await wait_status(app, run_id, RunStatus.WAITING_FOR_EVENT)
        assert await app.result(run_id, timeout=10) == "deadline"
        late = await app.start(deadline_on_event)
        await wait_status(app, late, RunStatus.WAITING_FOR_EVENT)
        await app.publish("reply.sent", {}, to_run=late)
        assert await app.result(late, timeout=10) == "reply.sent"


@workflow
async def bounded_activity(ctx: WorkflowContext) -> str:
    try:
        return await asyncio.wait_for(step(ctx, "slow", 30.0), timeout=0.2)
    except TimeoutError:
        await sleep(ctx, 0.1)  # suspend and replay: the cancelled attempt stays cancelled
        return "gave up"


async def test_wait_for_cancels_a_slow_activity(make_app: AppFactory) -> None:
    CALLS.clear()
    async with make_app([bounded_activity]) as app:
        run_id = await app.start(bounded_activity)
        assert await app.result(run_id, timeout=10) == "gave up"
        history = await app.history(run_id)
    assert CALLS == ["slow"]
    assert {s.seq: s.kind for s in history} == {0: StepKind.TIMER, 1: StepKind.CANCELLED,
                                               2: StepKind.TIMER}


@workflow
async def tasks_and_groups(ctx: WorkflowContext) -> list[str]:
    background = asyncio.create_task(step(ctx, "bg"))
    async with asyncio.TaskGroup() as group:
        first = group.create_task(step(ctx, "g1", 0.05))
        second = group.create_task(step(ctx, "g2"))
    await sleep(ctx, 0.1)
    return [await background, first.result(), second.result()]


async def test_create_task_and_task_groups(make_app: AppFactory) -> None:
    async with make_app([tasks_and_groups]) as app:
        run_id = await app.start(tasks_and_groups)
        assert await app.result(run_id, timeout=10) == ["bg", "g1", "g2"]


@workflow
async def blocked_on_nothing(ctx: WorkflowContext) -> None:
    await asyncio.Event().wait()


async def test_waiting_on_something_that_is_not_a_step_fails_clearly(make_app: AppFactory
                                                                     ) -> None:
    async with make_app([blocked_on_nothing]) as app:
        run_id = await app.start(blocked_on_nothing)
        info = await app.wait_finished(run_id, timeout=10)
    assert info.status is RunStatus.FAILED
    assert "waits on something that is not a step" in (info.error or "")


@workflow
async def uses_io(ctx: WorkflowContext) -> None:
    await asyncio.open_connection("127.0.0.1", 9)


async def test_input_and_output_in_workflow_code_fails_clearly(make_app: AppFactory) -> None:
    async with make_app([uses_io]) as app:
        run_id = await app.start(uses_io)
        info = await app.wait_finished(run_id, timeout=10)
    assert info.status is RunStatus.FAILED
    assert "workflow code cannot use" in (info.error or "")


FLAKY: dict[str, int] = {}


@activity(retry=RetryPolicy(max_attempts=3, initial_interval=0.1))
async def flaky(ctx: WorkflowContext, key: str) -> int:
    FLAKY[key] = FLAKY.get(key, 0) + 1
    if FLAKY[key] == 1:
        raise RuntimeError("first attempt fails")
    return ctx.attempt


@workflow
async def retry_beside_a_slow_step(ctx: WorkflowContext, key: str) -> list[Any]:
    return list(await asyncio.gather(flaky(ctx, key), step(ctx, "slow", 0.6)))


async def test_a_retry_delay_runs_out_in_process_while_another_step_runs(
        make_app: AppFactory, database: str) -> None:
    async with make_app([retry_beside_a_slow_step]) as app:
        run_id = await app.start(retry_beside_a_slow_step, database)
        seen: set[RunStatus] = set()
        async with asyncio.timeout(10):
            while not (info := await app.get_run(run_id)).status.finished:
                seen.add(info.status)
                await asyncio.sleep(0.02)
        assert await app.result(run_id) == [2, "slow"]
    assert RunStatus.WAITING_FOR_TIMER not in seen  # the retry never suspended the run


@workflow
async def fails_beside_a_slow_step(ctx: WorkflowContext) -> None:
    async def boom() -> None:
        await step(ctx, "quick")
        raise ValueError("branch failed")

    await asyncio.gather(boom(), step(ctx, "very slow", 30))


async def test_a_failing_branch_fails_the_run_and_stops_the_others(make_app: AppFactory) -> None:
    async with make_app([fails_beside_a_slow_step]) as app:
        run_id = await app.start(fails_beside_a_slow_step)
        info = await app.wait_finished(run_id, timeout=10)
    assert info.status is RunStatus.FAILED and "branch failed" in (info.error or "")
