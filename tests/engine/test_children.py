"""Child workflows: run_child, start_child and handles, errors, cancellation."""

from __future__ import annotations

import asyncio

from kenning import (
    ChildWorkflowError,
    RunStatus,
    WorkflowContext,
    activity,
    sleep,
    wait_event,
    workflow,
)
from kenning.core.models import StepKind
from tests.conftest import wait_status

from .conftest import AppFactory


@activity
async def double(ctx: WorkflowContext, n: int) -> int:
    return 2 * n


@workflow
async def doubler(ctx: WorkflowContext, n: int) -> int:
    await sleep(ctx, 0.05)  # the child suspends; the parent waits without a process
    return await double(ctx, n)


@workflow
async def broken_child(ctx: WorkflowContext, why: str) -> None:
    raise ValueError(why)


@workflow
async def waiting_child(ctx: WorkflowContext) -> None:
    await wait_event(ctx, "child.never")


@workflow
async def one_child(ctx: WorkflowContext, n: int) -> int:
    return await doubler.run_child(ctx, n) + 1


async def test_run_child_returns_the_childs_result(make_app: AppFactory) -> None:
    async with make_app([one_child, doubler]) as app:
        run_id = await app.start(one_child, 20)
        assert await app.result(run_id, timeout=15) == 41
        children = await app.store.list_runs(parent=run_id)
        history = await app.history(run_id)
    assert [c.run_id for c in children] == [f"{run_id}-0"]
    assert children[0].parent_run_id == run_id and children[0].status is RunStatus.COMPLETED
    assert [s.kind for s in history] == [StepKind.CHILD, StepKind.EVENT]


@workflow
async def fan_out_children(ctx: WorkflowContext, count: int) -> list[int]:
    handles = [await doubler.start_child(ctx, n) for n in range(count)]
    assert [h.run_id for h in handles] == [f"{ctx.run_id}-{i}" for i in range(count)]
    return list(await asyncio.gather(*(h.result() for h in handles)))


async def test_start_child_fans_out(make_app: AppFactory) -> None:
    async with make_app([fan_out_children, doubler]) as app:
        run_id = await app.start(fan_out_children, 4)
        assert await app.result(run_id, timeout=20) == [0, 2, 4, 6]


@workflow
async def named_child(ctx: WorkflowContext) -> int:
    return await doubler.run_child(ctx, 3, run_id=f"{ctx.run_id}-special")


async def test_a_child_run_id_can_be_given(make_app: AppFactory) -> None:
    async with make_app([named_child, doubler]) as app:
        run_id = await app.start(named_child, run_id="p")
        assert await app.result(run_id, timeout=15) == 6
        assert (await app.get_run("p-special")).status is RunStatus.COMPLETED


@workflow
async def catches_child_error(ctx: WorkflowContext) -> str:
    try:
        await broken_child.run_child(ctx, "no stock")
    except ChildWorkflowError as exc:
        return f"{exc.status}: {exc.error}"
    return "no error"


async def test_a_failed_child_raises_child_workflow_error(make_app: AppFactory) -> None:
    async with make_app([catches_child_error, broken_child]) as app:
        run_id = await app.start(catches_child_error)
        assert await app.result(run_id, timeout=15) == "failed: ValueError: no stock"


@workflow
async def parent_of_waiters(ctx: WorkflowContext) -> None:
    handles = [await waiting_child.start_child(ctx) for _ in range(2)]
    await asyncio.gather(*(h.result() for h in handles))


async def test_cancelling_the_parent_cancels_its_children(make_app: AppFactory) -> None:
    async with make_app([parent_of_waiters, waiting_child]) as app:
        run_id = await app.start(parent_of_waiters)
        await wait_status(app, run_id, RunStatus.WAITING_FOR_EVENT)  # children exist then
        for child in (f"{run_id}-0", f"{run_id}-1"):
            await wait_status(app, child, RunStatus.WAITING_FOR_EVENT)
        info = await app.get_run(run_id)
        assert [w.kind for w in info.waiting_for] == ["child", "child"]
        await app.cancel(run_id)
        for child in (f"{run_id}-0", f"{run_id}-1"):
            assert (await app.get_run(child)).status is RunStatus.CANCELLED


@workflow
async def child_or_deadline(ctx: WorkflowContext) -> str:
    handle = await waiting_child.start_child(ctx)
    try:
        await asyncio.wait_for(handle.result(), timeout=0.2)
    except TimeoutError:
        return "deadline"
    return "child"


async def test_a_child_that_loses_a_race_is_cancelled(make_app: AppFactory) -> None:
    async with make_app([child_or_deadline, waiting_child]) as app:
        run_id = await app.start(child_or_deadline)
        assert await app.result(run_id, timeout=15) == "deadline"
        info = await app.wait_finished(f"{run_id}-0", timeout=10)
    assert info.status is RunStatus.CANCELLED


@workflow
async def two_waiters_one_gives_up(ctx: WorkflowContext, n: int) -> tuple[str, int]:
    handle = await doubler.start_child(ctx, n)
    impatient = asyncio.ensure_future(asyncio.wait_for(handle.result(), timeout=0.01))
    patient = asyncio.ensure_future(handle.result())
    try:
        await impatient
        gave_up = "no"
    except TimeoutError:
        gave_up = "yes"
    return gave_up, await patient


async def test_a_child_awaited_twice_survives_one_cancelled_waiter(make_app: AppFactory
                                                                   ) -> None:
    async with make_app([two_waiters_one_gives_up, doubler]) as app:
        run_id = await app.start(two_waiters_one_gives_up, 4)
        assert await app.result(run_id, timeout=15) == ["yes", 8]
        child = await app.get_run(f"{run_id}-0")
    assert child.status is RunStatus.COMPLETED


async def test_bad_child_arguments_fail_the_parent(make_app: AppFactory) -> None:
    @workflow(name="calls_bad_args")
    async def calls_bad_args(ctx: WorkflowContext) -> int:
        return await doubler.run_child(ctx, "not a number")  # type: ignore[arg-type]

    async with make_app([calls_bad_args, doubler]) as app:
        run_id = await app.start(calls_bad_args)
        info = await app.wait_finished(run_id, timeout=10)
    assert info.status is RunStatus.FAILED and "doubler" in (info.error or "")
