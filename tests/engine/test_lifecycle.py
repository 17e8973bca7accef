"""Runs over their life: idempotent start, cancel, restart, replay and its determinism."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kenning import (
    InvalidInput,
    NonDeterminismError,
    RunCancelled,
    RunFailed,
    RunNotFound,
    RunStatus,
    WorkflowContext,
    activity,
    sleep,
    wait_event,
    workflow,
)
from kenning.core.definitions import WorkflowDefinition
from tests.conftest import wait_status

from .conftest import AppFactory


@workflow
async def waits(ctx: WorkflowContext, tag: str) -> str:
    event = await wait_event(ctx, "go")
    return f"{tag}:{event.data}"


async def test_start_is_idempotent_on_the_run_id(make_app: AppFactory) -> None:
    async with make_app([waits]) as app:
        first = await waits.start(app, "x", run_id="same")  # type: ignore[call-arg]
        second = await app.start(waits, "y", run_id="same")
        assert first == second == "same"
        assert len(await app.list_runs()) == 1


async def test_bad_input_is_rejected_at_start(make_app: AppFactory) -> None:
    async with make_app([waits]) as app:
        with pytest.raises(InvalidInput, match="workflow 'waits' input"):
            await app.start(waits)
        with pytest.raises(InvalidInput, match="tag"):
            await app.start(waits, {"not": "a string"})
        with pytest.raises(RunNotFound):
            await app.get_run("nope")


async def test_cancel_a_waiting_run(make_app: AppFactory) -> None:
    async with make_app([waits]) as app:
        run_id = await waits.start(app, "x")
        await wait_status(app, run_id, RunStatus.WAITING_FOR_EVENT)
        info = await app.cancel(run_id, "not needed")
        assert info.status is RunStatus.CANCELLED and info.waiting_for == ()
        with pytest.raises(RunCancelled, match="not needed"):
            await app.result(run_id, timeout=1)
        late = await app.publish("go", 1, to_run=run_id)
        assert late.resumed_runs == ()


started = asyncio.Event()


@activity
async def endless(ctx: WorkflowContext) -> None:
    started.set()
    await asyncio.sleep(60)


@workflow
async def busy(ctx: WorkflowContext) -> None:
    await endless(ctx)


async def test_cancel_a_running_run_stops_its_activity(make_app: AppFactory) -> None:
    async with make_app([busy]) as app:
        run_id = await busy.start(app)
        await asyncio.wait_for(started.wait(), 5)
        await app.cancel(run_id)
        with pytest.raises(RunCancelled):
            await app.result(run_id, timeout=2)
        await asyncio.sleep(0.05)
        assert app.worker is not None and app.worker.active_runs == 0
        assert await app.history(run_id) == []


async def test_a_restarted_app_resumes_unfinished_runs(make_app: AppFactory) -> None:
    async with make_app([waits]) as app:
        waiting = await waits.start(app, "w")
        await wait_status(app, waiting, RunStatus.WAITING_FOR_EVENT)
    async with make_app([waits], worker=False) as client:
        pending = await client.start(waits, "p")  # nobody works: stays pending
        assert (await client.get_run(pending)).status is RunStatus.PENDING
    async with make_app([waits]) as app:
        await wait_status(app, pending, RunStatus.WAITING_FOR_EVENT)
        await app.publish("go", 1)
        assert await app.result(waiting, timeout=5) == "w:1"
        assert await app.result(pending, timeout=5) == "p:1"


calls: list[str] = []


@activity
async def note(ctx: WorkflowContext, value: str) -> str:
    calls.append(value)
    return value


@workflow(name="deterministic")
async def deterministic(ctx: WorkflowContext) -> dict[str, Any]:
    before = {"uuid": str(ctx.uuid()), "random": ctx.random(), "now": ctx.now().isoformat()}
    await note(ctx, repr(before))
    await wait_event(ctx, "go")
    return before


async def test_ctx_helpers_are_stable_across_replay(make_app: AppFactory) -> None:
    calls.clear()
    async with make_app([deterministic]) as app:
        run_id = await deterministic.start(app)
        await wait_status(app, run_id, RunStatus.WAITING_FOR_EVENT)
        await app.publish("go", None)
        replayed = await app.result(run_id, timeout=5)
        assert calls == [repr(replayed)]  # the replay computed the same values, ran nothing


@workflow(name="deterministic")
async def changed(ctx: WorkflowContext) -> None:
    await sleep(ctx, 1)  # the code now sleeps where history has the activity 'note'


async def test_changed_code_fails_with_non_determinism(make_app: AppFactory) -> None:
    async with make_app([deterministic]) as app:
        run_id = await deterministic.start(app)
        await wait_status(app, run_id, RunStatus.WAITING_FOR_EVENT)
    async with make_app([changed]) as app:
        await app.publish("go", None)
        with pytest.raises(RunFailed) as failed:
            await app.result(run_id, timeout=5)
        assert failed.value.error.startswith(NonDeterminismError.__name__)
        assert (f"run {run_id} step 0: history has activity 'note', code called timer 'sleep'"
                in failed.value.error)


@workflow
async def naps(ctx: WorkflowContext) -> str:
    await sleep(ctx, 60)
    return "rested"


async def test_durable_sleep_on_a_fake_clock(make_app: AppFactory, fake_clock: Any) -> None:
    async with make_app([naps], clock=fake_clock) as app:
        run_id = await naps.start(app)
        await wait_status(app, run_id, RunStatus.WAITING_FOR_TIMER)
        info = await app.get_run(run_id)
        assert info.waiting_for and info.waiting_for[0].kind == "timer"
        fake_clock.advance(59)
        await asyncio.sleep(0.2)
        assert (await app.get_run(run_id)).status is RunStatus.WAITING_FOR_TIMER
        fake_clock.advance(1)
        assert await app.result(run_id, timeout=5) == "rested"


@workflow
async def short_nap(ctx: WorkflowContext) -> float:
    started_at = ctx.now()
    await sleep(ctx, 0.3)
    return (ctx.now() - started_at).total_seconds()


async def test_durable_sleep_in_real_time(make_app: AppFactory) -> None:
    async with make_app([short_nap]) as app:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        run_id = await short_nap.start(app)
        slept = await app.result(run_id, timeout=5)
        elapsed = loop.time() - t0
        assert slept >= 0.3
        assert 0.3 <= elapsed < 1.0, "the timer fires on an alarm, not on a 1 s poll"


async def test_two_apps_in_one_process_keep_their_own_workflows(
    make_app: AppFactory, tmp_path: Any
) -> None:
    from kenning import App
    from kenning.runtime.worker import WorkerOptions

    opts = WorkerOptions(poll_interval=0.05)
    async with App(str(tmp_path / "a.db"), workflows=[waits], worker_options=opts) as a, \
            App(str(tmp_path / "b.db"), workflows=[naps], worker_options=opts) as b:
        assert a.registry is not None and a.registry.names == ["waits"]
        assert b.registry is not None and b.registry.names == ["naps"]
        run_id = await a.start("naps")
        await asyncio.sleep(0.2)
        assert (await a.get_run(run_id)).status is RunStatus.PENDING  # a serves no 'naps'


def test_duplicate_workflow_names_in_the_catalogue_are_an_error() -> None:
    from kenning import ConfigurationError
    from kenning.core.definitions import Registry

    assert isinstance(changed, WorkflowDefinition)
    with pytest.raises(ConfigurationError, match="workflow name 'deterministic' is used by"):
        Registry.from_catalogue()


@workflow(name="shrinking")
async def shrinking_v1(ctx: WorkflowContext) -> None:
    await note(ctx, "v1 only")
    await wait_event(ctx, "go")


@workflow(name="shrinking")
async def shrinking_v2(ctx: WorkflowContext) -> str:
    return "the new code takes no step at all"


async def test_code_that_skips_recorded_steps_is_non_deterministic(
    make_app: AppFactory,
) -> None:
    async with make_app([shrinking_v1]) as app:
        run_id = await app.start(shrinking_v1)
        await wait_status(app, run_id, RunStatus.WAITING_FOR_EVENT)
    async with make_app([shrinking_v2]) as app:
        await app.publish("go", None)
        with pytest.raises(RunFailed) as failed:
            await app.result(run_id, timeout=5)
        assert (f"run {run_id} step 0: history has activity 'note', code returned without it"
                in failed.value.error)


async def test_starting_an_unregistered_definition_serves_it(make_app: AppFactory) -> None:
    async with make_app([]) as app:
        run_id = await naps.start(app)
        await wait_status(app, run_id, RunStatus.WAITING_FOR_TIMER)


async def test_sleep_counts_from_workflow_time(make_app: AppFactory, fake_clock: Any) -> None:
    async with make_app([naps], worker=False, clock=fake_clock) as client:
        run_id = await client.start(naps)  # created now, but no worker takes it yet
    fake_clock.advance(30)
    async with make_app([naps], clock=fake_clock) as app:
        await wait_status(app, run_id, RunStatus.WAITING_FOR_TIMER)
        info = await app.get_run(run_id)
        assert info.waiting_for and info.waiting_for[0].wake_at is not None
        assert info.waiting_for[0].wake_at.timestamp() == info.created_at.timestamp() + 60
        fake_clock.advance(30)
        assert await app.result(run_id, timeout=5) == "rested"
