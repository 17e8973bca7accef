"""An execution is freed when the worker lets go of it, not at the next full garbage
collection: it leaves no reference cycle behind, whether its run completed, failed,
continued as new, suspended on an event, raced a timer or fanned out activities. (A worker
executes hundreds of runs at once; dead executions that wait for the cyclic collector pile
up and stay in its RSS.)"""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import Iterator

import pytest

from kenning import (
    RunStatus,
    WorkflowContext,
    activity,
    continue_as_new,
    sleep,
    wait_event,
    workflow,
)
from tests.conftest import wait_status

from .conftest import AppFactory


@activity
async def add_one(ctx: WorkflowContext, n: int) -> int:
    return n + 1


@workflow
async def mem_straight(ctx: WorkflowContext, n: int) -> int:
    return await add_one(ctx, await add_one(ctx, n))


@workflow
async def mem_fanned(ctx: WorkflowContext, n: int) -> list[int]:
    return list(await asyncio.gather(*(add_one(ctx, n + i) for i in range(3))))


@workflow
async def mem_waits(ctx: WorkflowContext) -> None:
    await wait_event(ctx, "memory.never")


@workflow
async def mem_races(ctx: WorkflowContext) -> str:
    timer = asyncio.ensure_future(sleep(ctx, 0.05))
    event = asyncio.ensure_future(wait_event(ctx, "memory.never"))
    done, _ = await asyncio.wait([timer, event], return_when=asyncio.FIRST_COMPLETED)
    return "timer" if timer in done else "event"


@workflow
async def mem_fails(ctx: WorkflowContext) -> None:
    await add_one(ctx, 1)
    raise ValueError("no")


@workflow
async def mem_continues(ctx: WorkflowContext, left: int) -> int:
    if left:
        continue_as_new(ctx, left - 1)
    return await add_one(ctx, left)


@pytest.fixture
def cyclic_garbage() -> Iterator[list[object]]:
    """What the cyclic collector finds after the test's body (the collector is off)."""
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    found: list[object] = []
    try:
        yield found
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def _kenning_garbage() -> Counter[str]:
    gc.collect()
    return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage
                   if type(o).__module__.startswith("kenning"))


async def test_executions_leave_no_reference_cycles(make_app: AppFactory,
                                                    cyclic_garbage: list[object]) -> None:
    async with make_app([mem_straight, mem_fanned, mem_waits, mem_races, mem_fails,
                         mem_continues]) as app:
        for _ in range(3):  # the first runs warm caches up
            done = [await app.start(mem_straight, 1), await app.start(mem_fanned, 1),
                    await app.start(mem_races), await app.start(mem_continues, 2)]
            waiting, failing = await app.start(mem_waits), await app.start(mem_fails)
            assert [await app.result(r, timeout=15) for r in done] == [3, [2, 3, 4], "timer",
                                                                      1]
            await wait_status(app, waiting, RunStatus.WAITING_FOR_EVENT)
            assert (await app.wait_finished(failing, timeout=15)).status is RunStatus.FAILED
        await asyncio.sleep(0.2)  # the worker lets go of the last executions
        garbage = _kenning_garbage()
        assert not garbage, sorted(garbage.items())
