"""Workflow code the operator tests serve with a ``kenning worker`` process."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from kenning import WorkflowContext, activity, wait_event, workflow


@activity
async def op_prepare(ctx: WorkflowContext, order_id: str) -> str:
    """A side effect before the wait."""
    return f"prepared {order_id}"


@workflow(name="op_approval")
async def op_approval(ctx: WorkflowContext, order_id: str) -> dict[str, Any]:
    """Prepare, wait for ``op.approved`` about this order, return who approved it."""
    note = await op_prepare(ctx, order_id)
    event = await wait_event(ctx, "op.approved", timeout=timedelta(seconds=120),
                             match={"data.order_id": order_id})
    return {"order_id": order_id, "note": note, "approved_by": event.data["by"]}


@workflow(name="op_fail")
async def op_fail(ctx: WorkflowContext, reason: str) -> None:
    """Fail at once."""
    raise ValueError(reason)
