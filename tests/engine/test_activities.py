"""Activities: results recorded once, rebuilt types, durable retries, terminal errors, timeouts."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from kenning import (
    ActivityError,
    RetryPolicy,
    RunFailed,
    RunStatus,
    TerminalError,
    WorkflowContext,
    activity,
    workflow,
)
from kenning.core.models import StepKind

from .conftest import AppFactory


@activity
async def inc(ctx: WorkflowContext, y: int) -> int:
    return y + 1


@workflow
async def add_three(ctx: WorkflowContext, x: int) -> int:
    for _ in range(3):
        x = await inc(ctx, x)
    return x


async def test_activities_run_in_sequence_and_are_recorded(make_app: AppFactory) -> None:
    async with make_app([add_three]) as app:
        run_ids = await asyncio.gather(*(add_three.start(app, i) for i in range(50)))
        results = await asyncio.gather(*(app.result(r, timeout=10) for r in run_ids))
        assert results == [i + 3 for i in range(50)]
        history = await app.history(run_ids[7])
        assert [(s.seq, s.kind, s.name, s.value) for s in history] == [
            (0, StepKind.ACTIVITY, "inc", "8"),
            (1, StepKind.ACTIVITY, "inc", "9"),
            (2, StepKind.ACTIVITY, "inc", "10"),
        ]


class Receipt(BaseModel):
    order_id: str
    total: float


@activity
async def make_receipt(ctx: WorkflowContext, order_id: str) -> Receipt:
    return Receipt(order_id=order_id, total=12.5)


@workflow
async def typed(ctx: WorkflowContext, order_id: str) -> dict[str, object]:
    receipt = await make_receipt(ctx, order_id)
    assert isinstance(receipt, Receipt)
    return {"order": receipt.order_id, "total": receipt.total}


async def test_pydantic_results_are_rebuilt(make_app: AppFactory) -> None:
    async with make_app([typed]) as app:
        run_id = await typed.start(app, "ORD-1")
        assert await app.result(run_id, timeout=5) == {"order": "ORD-1", "total": 12.5}


attempts: dict[str, int] = {}


@activity(retry=RetryPolicy(max_attempts=4, initial_interval=0.05, backoff=2.0))
async def flaky(ctx: WorkflowContext, key: str) -> str:
    attempts[key] = attempts.get(key, 0) + 1
    assert ctx.attempt == attempts[key]
    if attempts[key] < 3:
        raise ConnectionError(f"attempt {attempts[key]} failed")
    return f"ok after {ctx.attempt} with key {ctx.idempotency_key}"


@workflow
async def retrying(ctx: WorkflowContext, key: str) -> str:
    return await flaky(ctx, key)


async def test_retries_with_backoff_are_durable_waits(make_app: AppFactory) -> None:
    attempts.clear()
    async with make_app([retrying]) as app:
        run_id = await retrying.start(app, "a", run_id="retry-run")
        seen_waiting = False
        for _ in range(100):
            info = await app.get_run(run_id)
            if info.status is RunStatus.WAITING_FOR_TIMER:
                seen_waiting = True
                assert info.waiting_for and info.waiting_for[0].kind == "retry"
            if info.status.finished:
                break
            await asyncio.sleep(0.01)
        assert seen_waiting, "a retry delay must be a durable timer, visible as waiting_for_timer"
        assert await app.result(run_id, timeout=5) == "ok after 3 with key retry-run:0"
        assert attempts["a"] == 3


@activity(retry=RetryPolicy(max_attempts=5, initial_interval=0.01))
async def refuses(ctx: WorkflowContext) -> None:
    attempts["refuses"] = attempts.get("refuses", 0) + 1
    raise TerminalError("card declined")


@workflow
async def terminal(ctx: WorkflowContext) -> str:
    try:
        await refuses(ctx)
    except ActivityError as exc:
        return f"handled: {exc.activity} {exc.error_type} {exc.message} x{exc.attempts}"
    return "unreachable"


async def test_terminal_error_stops_retries_and_reaches_the_workflow(
    make_app: AppFactory,
) -> None:
    attempts.clear()
    async with make_app([terminal]) as app:
        run_id = await terminal.start(app)
        result = await app.result(run_id, timeout=5)
        assert result == "handled: refuses TerminalError card declined x1"
        assert attempts["refuses"] == 1


@activity(retry=RetryPolicy(max_attempts=2, initial_interval=0.01))
async def always_fails(ctx: WorkflowContext) -> None:
    raise ValueError("bad input")


@workflow
async def exhausted(ctx: WorkflowContext) -> None:
    await always_fails(ctx)


async def test_exhausted_retries_fail_the_run_with_the_error(make_app: AppFactory) -> None:
    async with make_app([exhausted]) as app:
        run_id = await exhausted.start(app)
        with pytest.raises(RunFailed) as failed:
            await app.result(run_id, timeout=5)
        assert "activity 'always_fails' failed after 2 attempt(s): ValueError: bad input" in (
            failed.value.error)
        history = await app.history(run_id)
        assert len(history) == 1 and history[0].error is not None


@activity(timeout=0.05, retry=RetryPolicy(max_attempts=1))
async def slow(ctx: WorkflowContext) -> None:
    await asyncio.sleep(5)


@workflow
async def times_out(ctx: WorkflowContext) -> None:
    await slow(ctx)


async def test_activity_timeout(make_app: AppFactory) -> None:
    async with make_app([times_out]) as app:
        run_id = await times_out.start(app)
        with pytest.raises(RunFailed, match=r"timed out after 0\.05 s"):
            await app.result(run_id, timeout=5)


@workflow
async def raises(ctx: WorkflowContext, n: int) -> None:
    await inc(ctx, n)
    raise RuntimeError(f"workflow gave up at {n}")


async def test_workflow_exception_fails_the_run(make_app: AppFactory) -> None:
    async with make_app([raises]) as app:
        run_id = await raises.start(app, 4)
        with pytest.raises(RunFailed) as failed:
            await app.result(run_id, timeout=5)
        assert failed.value.error == "RuntimeError: workflow gave up at 4"
        info = await app.get_run(run_id)
        assert info.status is RunStatus.FAILED and info.finished_at is not None
