"""Workflows of the outage tests, served by a real ``kenning worker`` process."""

from __future__ import annotations

import asyncio

from kenning import WorkflowContext, activity, sleep, wait_event, workflow


@activity
async def outage_step(ctx: WorkflowContext, n: int) -> int:
    """``n + 1``, after a moment (so that outages hit runs in the middle of a step)."""
    await asyncio.sleep(0.05)
    return n + 1


@workflow
async def outage_flow(ctx: WorkflowContext, n: int) -> int:
    """A step, a wait for the event addressed to this run, a timer, a step."""
    n = await outage_step(ctx, n)
    event = await wait_event(ctx, "outage.go")
    await sleep(ctx, 0.2)
    n = await outage_step(ctx, n)
    return n + int(event.data["add"])
