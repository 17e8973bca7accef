"""Fulfillment: three waits in a row, each for the next event about the same order.

Try it with ``kenning dev examples/fulfillment.py``, then
``kenning start fulfillment_workflow --input '"ORD-5"'`` and three
``kenning send order.packed --data '{"order_id": "ORD-5"}'`` (then ``order.picked_up``,
``order.delivered``).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from kenning import EventTimeout, WorkflowContext, activity, wait_event, workflow

STAGES = ("order.packed", "order.picked_up", "order.delivered")


@activity
async def notify_customer(ctx: WorkflowContext, order_id: str, stage: str) -> str:
    """Tell the customer how far the order got."""
    return f"{order_id}: {stage}"


@workflow
async def fulfillment_workflow(ctx: WorkflowContext, order_id: str) -> dict[str, Any]:
    """Follow an order from packing to delivery; give up if a stage takes over a day."""
    timeline: list[str] = []
    for stage in STAGES:
        try:
            event = await wait_event(ctx, stage, timeout=timedelta(days=1),
                                     match={"data.order_id": order_id})
        except EventTimeout:
            return {"order_id": order_id, "status": "stuck", "after": timeline}
        timeline.append(f"{stage}@{event.time or ctx.now().isoformat()}")
        await notify_customer(ctx, order_id, stage)
    return {"order_id": order_id, "status": "delivered", "timeline": timeline}
