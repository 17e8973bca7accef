"""Order timeout: create the order, sleep durably for 60 s, cancel it if still unpaid.

The run holds no process during the minute: its timer lives in the store and any worker
resumes it when due. Try it with ``kenning dev examples/order_timeout.py`` and
``kenning start order_timeout_workflow --input '"ORD-9"'``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from kenning import WorkflowContext, activity, sleep, workflow

PAID_ORDERS: set[str] = set()  # stands in for the payment service's database


@activity
async def create_order(ctx: WorkflowContext, order_id: str) -> dict[str, Any]:
    """Create the order in the order service."""
    return {"order_id": order_id, "created_at": ctx.now().isoformat()}


@activity
async def check_payment(ctx: WorkflowContext, order_id: str) -> bool:
    """Ask the payment service whether the order was paid."""
    return order_id in PAID_ORDERS


@activity
async def cancel_order(ctx: WorkflowContext, order_id: str) -> str:
    """Cancel the order in the order service."""
    return f"order {order_id} cancelled"


@workflow
async def order_timeout_workflow(
    ctx: WorkflowContext, order_id: str, pay_within_seconds: float = 60
) -> dict[str, Any]:
    """Give the customer a minute to pay, then cancel an unpaid order."""
    await create_order(ctx, order_id)
    await sleep(ctx, timedelta(seconds=pay_within_seconds))
    if await check_payment(ctx, order_id):
        return {"order_id": order_id, "status": "paid"}
    return {"order_id": order_id, "status": "cancelled",
            "detail": await cancel_order(ctx, order_id)}
