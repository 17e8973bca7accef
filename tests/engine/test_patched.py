"""``ctx.patched``: histories recorded before a code change replay the old path, histories
recorded with it (or runs started after it) take the new one; nothing is non-deterministic."""

from __future__ import annotations

from kenning import RunStatus, WorkflowContext, activity, sleep, wait_event, workflow
from kenning.core.models import StepKind
from tests.conftest import wait_status
from tests.engine.conftest import AppFactory


@activity
async def step_a(ctx: WorkflowContext) -> str:
    """The old code's first step."""
    return "a"


@activity
async def step_b(ctx: WorkflowContext) -> str:
    """The step both versions end with."""
    return "b"


@activity
async def step_c(ctx: WorkflowContext) -> str:
    """The new code's replacement for ``step_a``."""
    return "c"


@workflow(name="patch_flow")
async def before_change(ctx: WorkflowContext) -> list[str]:
    """The code as it was."""
    first = await step_a(ctx)
    await wait_event(ctx, "go")
    return [first, await step_b(ctx)]


@workflow(name="patch_flow")
async def after_change(ctx: WorkflowContext) -> list[str]:
    """The code with the change, keeping the old path for old runs."""
    first = await step_c(ctx) if ctx.patched("use-c") else await step_a(ctx)
    await wait_event(ctx, "go")
    return [first, await step_b(ctx)]


@workflow(name="sleep_flow")
async def sleep_before(ctx: WorkflowContext) -> list[str]:
    """Old code that suspends at the very position the change takes."""
    await sleep(ctx, 0.3)
    return [await step_b(ctx)]


@workflow(name="sleep_flow")
async def sleep_after(ctx: WorkflowContext) -> list[str]:
    """New code that adds a step before the sleep."""
    head = [await step_c(ctx)] if ctx.patched("add-c") else []
    await sleep(ctx, 0.3)
    return [*head, await step_b(ctx)]


async def test_a_history_recorded_before_the_change_replays_the_old_path(
        make_app: AppFactory) -> None:
    async with make_app([before_change], worker_id="old-code") as app:
        run_id = await app.start(before_change, run_id="old-run")
        await wait_status(app, run_id, RunStatus.WAITING_FOR_EVENT)
    async with make_app([after_change], worker_id="new-code") as app:
        await app.publish("go")
        assert await app.result(run_id, timeout=5) == ["a", "b"]
        history = await app.history(run_id)
        assert [(s.kind, s.name) for s in history] == [
            (StepKind.ACTIVITY, "step_a"), (StepKind.EVENT, "go"), (StepKind.ACTIVITY, "step_b")]


async def test_a_run_started_after_the_change_takes_the_new_path_on_every_replay(
        make_app: AppFactory) -> None:
    async with make_app([after_change], worker_id="new-code") as app:
        run_id = await app.start(after_change, run_id="new-run")
        await wait_status(app, run_id, RunStatus.WAITING_FOR_EVENT)
        recorded = await app.history(run_id)
        assert [(s.seq, s.kind, s.name) for s in recorded] == [
            (0, StepKind.PATCH, "use-c"), (1, StepKind.ACTIVITY, "step_c")]
    async with make_app([after_change], worker_id="new-code-again") as app:
        await app.publish("go")  # resumed from the store: the marker is replayed
        assert await app.result(run_id, timeout=5) == ["c", "b"]
        history = await app.history(run_id)
        assert [s.name for s in history] == ["use-c", "step_c", "go", "step_b"]


async def test_a_run_suspended_where_the_change_begins_keeps_the_old_path(
        make_app: AppFactory) -> None:
    async with make_app([sleep_before], worker_id="old-code") as app:
        run_id = await app.start(sleep_before, run_id="sleeping")
        await wait_status(app, run_id, RunStatus.WAITING_FOR_TIMER)
    async with make_app([sleep_after], worker_id="new-code") as app:
        assert await app.result(run_id, timeout=5) == ["b"]
        assert [s.name for s in await app.history(run_id)] == ["sleep", "step_b"]
        fresh = await app.start(sleep_after, run_id="fresh")
        assert await app.result(fresh, timeout=5) == ["c", "b"]
        assert [s.kind for s in await app.history(fresh)][:2] == [StepKind.PATCH,
                                                                   StepKind.ACTIVITY]


async def test_without_patched_the_changed_code_fails_the_old_run(make_app: AppFactory) -> None:
    @workflow(name="patch_flow")
    async def unguarded(ctx: WorkflowContext) -> list[str]:
        first = await step_c(ctx)
        await wait_event(ctx, "go")
        return [first, await step_b(ctx)]

    async with make_app([before_change], worker_id="old-code") as app:
        run_id = await app.start(before_change, run_id="old-run")
        await wait_status(app, run_id, RunStatus.WAITING_FOR_EVENT)
    async with make_app([unguarded], worker_id="new-code") as app:
        await app.publish("go")
        info = await app.wait_finished(run_id, timeout=5)
        assert info.status is RunStatus.FAILED
        assert info.error is not None and "NonDeterminismError" in info.error
