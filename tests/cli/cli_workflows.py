"""Workflow code the CLI tests serve with ``kenning dev`` / ``kenning worker`` (as a file)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from kenning import WorkflowContext, activity, wait_event, workflow


@activity
async def cli_e2e_prepare(ctx: WorkflowContext, order_id: str) -> str:
    """A side effect before the wait, so the history has an activity step."""
    return f"prepared {order_id}"


@workflow(name="cli_e2e_approval")
async def cli_e2e_approval(ctx: WorkflowContext, order_id: str) -> dict[str, Any]:
    """Prepare, wait for ``cli.e2e.approved`` about this order, return who approved it."""
    note = await cli_e2e_prepare(ctx, order_id)
    event = await wait_event(ctx, "cli.e2e.approved", timeout=timedelta(seconds=60),
                             match={"data.order_id": order_id})
    return {"order_id": order_id, "note": note, "approved_by": event.data["by"]}
