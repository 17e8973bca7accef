"""A race of an event against a deadline: approve within a day, or escalate.

``asyncio.wait`` races the approval event against a durable timer; whichever comes first
wins and the loser is cancelled (and recorded so). Neither holds a process while the run
waits, and a replay takes the same branch. Try it with
``kenning dev examples/approval_deadline.py``,
``kenning start approval_workflow --input '"EXP-7"'`` and
``kenning send approval.granted --data '{"request": "EXP-7"}'``.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from kenning import WorkflowContext, activity, sleep, wait_event, workflow


@activity
async def notify_approver(ctx: WorkflowContext, request: str) -> str:
    """Ask the approver (chat message, e-mail) to approve the request."""
    return f"asked to approve {request}"


@activity
async def escalate(ctx: WorkflowContext, request: str) -> str:
    """Hand the request to the approver's manager."""
    return f"{request} escalated"


@workflow
async def approval_workflow(ctx: WorkflowContext, request: str,
                            deadline_seconds: float = 86_400) -> dict[str, Any]:
    """Wait for approval or the deadline, whichever comes first."""
    await notify_approver(ctx, request)
    approval = asyncio.ensure_future(
        wait_event(ctx, ["approval.granted", "approval.denied"],
                   match={"data.request": request}))
    deadline = asyncio.ensure_future(sleep(ctx, timedelta(seconds=deadline_seconds)))
    done, _ = await asyncio.wait([approval, deadline], return_when=asyncio.FIRST_COMPLETED)
    if approval in done:
        deadline.cancel()
        event = approval.result()
        return {"request": request, "status": event.type.removeprefix("approval."),
                "by": (event.data or {}).get("by")}
    approval.cancel()
    return {"request": request, "status": "escalated", "detail": await escalate(ctx, request)}
