"""Misuse fails at once and says why: steps inside activities, swallowed suspensions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import pytest

from kenning import (
    RunFailed,
    RunStatus,
    WorkflowContext,
    activity,
    send_event,
    sleep,
    wait_event,
    workflow,
)
from tests.conftest import FakeClock, wait_status

from .conftest import AppFactory


@pytest.fixture
def backend() -> str:
    """Misuse is caught in the engine, before any store: SQLite is enough."""
    return "sqlite"

CALLS: list[str] = []


@activity
async def inner(ctx: WorkflowContext) -> str:
    """Should never run from inside another activity."""
    CALLS.append("inner")
    return "inner"


@activity
async def outer(ctx: WorkflowContext) -> str:
    """Calls another activity: misuse."""
    CALLS.append("outer")
    return await inner(ctx)


@activity
async def outer_hiding_it(ctx: WorkflowContext) -> str:
    """Calls another activity and hides the error it gets."""
    CALLS.append("outer_hiding_it")
    try:
        await inner(ctx)
    except Exception:
        return "pretending all is well"
    return "unreachable"


@activity
async def sleeps_inside(ctx: WorkflowContext) -> None:
    """Calls sleep with its own ctx."""
    await sleep(ctx, 1)


@activity
async def sends_inside(ctx: WorkflowContext) -> None:
    """Calls send_event with its own ctx."""
    await send_event(ctx, "x.happened")


@workflow(name="misuse_nested")
async def nested(ctx: WorkflowContext, which: str) -> Any:
    """Calls the misusing activity named ``which``."""
    chosen = {"outer": outer, "outer_hiding_it": outer_hiding_it,
              "sleeps_inside": sleeps_inside, "sends_inside": sends_inside}[which]
    return await chosen(ctx)


@workflow(name="misuse_captured_ctx")
async def captured_ctx(ctx: WorkflowContext) -> Any:
    """An activity defined inline that uses the workflow's own ctx."""
    @activity(name="closure")
    async def closure(actx: WorkflowContext) -> str:
        return await inner(ctx)  # the workflow's ctx, from inside an activity
    return await closure(ctx)


@pytest.mark.parametrize(("which", "message"), [
    ("outer", "activity 'outer' called activity 'inner'"),
    ("outer_hiding_it", "activity 'outer_hiding_it' called activity 'inner'"),
    ("sleeps_inside", "activity 'sleeps_inside' called sleep"),
    ("sends_inside", "activity 'sends_inside' called send_event"),
])
async def test_a_step_inside_an_activity_fails_the_run_at_once(
    make_app: AppFactory, which: str, message: str
) -> None:
    CALLS.clear()
    async with make_app([nested]) as app:
        run_id = await nested.start(app, which)
        with pytest.raises(RunFailed, match=f"StepInActivityError: run {run_id}: {message}"):
            await app.result(run_id, timeout=10)
        assert "inner" not in CALLS
        assert CALLS.count(which) <= 1  # no retry of the misusing activity
        assert await app.history(run_id) == []  # the inner call took no history slot


async def test_a_step_with_the_workflows_ctx_inside_an_activity_is_caught_too(
    make_app: AppFactory
) -> None:
    CALLS.clear()
    async with make_app([captured_ctx]) as app:
        run_id = await captured_ctx.start(app)
        with pytest.raises(RunFailed, match="activity 'closure' called activity 'inner'"):
            await app.result(run_id, timeout=10)
    assert CALLS == []


@activity
async def side_effect(ctx: WorkflowContext, what: str) -> str:
    """Records that it ran."""
    CALLS.append(what)
    return what


@workflow(name="misuse_swallows_sleep")
async def swallows_sleep(ctx: WorkflowContext) -> str:
    """Catches BaseException around a durable sleep, then calls an activity."""
    try:  # noqa: SIM105  (the misuse under test, spelled as users write it)
        await sleep(ctx, 60)
    except BaseException:
        pass
    return await side_effect(ctx, "after the sleep")


@workflow(name="misuse_swallows_wait")
async def swallows_wait(ctx: WorkflowContext) -> Any:
    """Catches BaseException around wait_event and returns something else."""
    try:
        event = await wait_event(ctx, "misuse.go")
    except BaseException:
        return "swallowed"
    return event.data


async def test_a_swallowed_suspension_still_suspends_and_nothing_runs_past_it(
    make_app: AppFactory, fake_clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    CALLS.clear()
    async with make_app([swallows_sleep], clock=fake_clock) as app:
        with caplog.at_level(logging.ERROR, logger="kenning.core.execution"):
            run_id = await swallows_sleep.start(app)
            await wait_status(app, run_id, RunStatus.WAITING_FOR_TIMER)
            async with asyncio.timeout(5):  # the execution logs once it has unwound
                while "caught the engine's" not in caplog.text:
                    await asyncio.sleep(0.01)
        assert CALLS == []  # the activity after the swallowed sleep did not run
        assert f"run {run_id} step 0: the workflow's code caught the engine's Suspended" in \
            caplog.text and "catch Exception, not BaseException" in caplog.text
        fake_clock.advance(60)
        assert app.worker is not None
        app.worker.wake()
        assert await app.result(run_id, timeout=10) == "after the sleep"
    assert CALLS == ["after the sleep"]


async def test_a_value_returned_past_a_swallowed_wait_is_not_the_result(
    make_app: AppFactory
) -> None:
    async with make_app([swallows_wait]) as app:
        run_id = await swallows_wait.start(app)
        await wait_status(app, run_id, RunStatus.WAITING_FOR_EVENT)
        info = await app.get_run(run_id)
        assert info.result is None and info.waiting_for
        await app.publish("misuse.go", {"ok": True})
        assert await app.result(run_id, timeout=10) == {"ok": True}


@workflow(name="misuse_hides_nondeterminism")
async def hides_nondeterminism(ctx: WorkflowContext) -> str:
    """v1: one activity, then a wait."""
    await side_effect(ctx, "v1")
    await wait_event(ctx, "misuse.resume")
    return "v1"


@workflow(name="misuse_hides_nondeterminism")
async def hides_nondeterminism_v2(ctx: WorkflowContext) -> str:
    """v2: a different activity first, its error swallowed."""
    with contextlib.suppress(Exception):
        await inner(ctx)
    return "v2 went on"


async def test_a_caught_non_determinism_error_still_fails_the_run(make_app: AppFactory) -> None:
    async with make_app([hides_nondeterminism]) as app:
        run_id = await hides_nondeterminism.start(app)
        await wait_status(app, run_id, RunStatus.WAITING_FOR_EVENT)
    async with make_app([hides_nondeterminism_v2]) as app:
        await app.publish("misuse.resume")
        with pytest.raises(RunFailed, match=r"NonDeterminismError: .*step 0: history has "
                                            r"activity 'side_effect', code called activity "
                                            r"'inner'"):
            await app.result(run_id, timeout=10)
