"""Payments over a Knative Broker: ask for a payment, wait for it, answer with a receipt.

The worker image serves this module (``--module examples.knative.payment_reply``): its own
``payment_reply_workflow`` and, imported from ``examples.payment``, ``payment_workflow``.

Events a workflow emits with ``send_event`` go through the outbox to ``$K_SINK`` (the
Broker, injected into the worker pods by a SinkBinding): published if and only if the step
that emits them commits, retried until the Broker accepts them.

Embedded (no cluster), the same code publishes to the app's own router:

    python -m examples.knative.payment_reply
"""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

from examples.payment import PaymentCompleted, payment_workflow
from kenning import App, WorkflowContext, decode_event_data, send_event, wait_event, workflow

__all__ = ["PAYMENT_SOURCE", "payment_reply_workflow", "payment_workflow"]

PAYMENT_SOURCE = "kenning/payments"
"""``source`` of the events this workflow emits."""


@workflow
async def payment_reply_workflow(ctx: WorkflowContext, order_id: str,
                                 amount: float) -> dict[str, Any]:
    """Ask for a payment through the Broker, wait for it, then announce the receipt."""
    await send_event(ctx, "payment.requested", {"order_id": order_id, "amount": amount},
                     source=PAYMENT_SOURCE, subject=order_id)
    # The answer may reach the sink before this wait is committed: lookback lets the wait
    # take an answer that arrived (and was kept) shortly before it.
    event = await wait_event(ctx, "payment.completed", timeout=timedelta(minutes=5),
                             match={"data.order_id": order_id}, lookback=timedelta(minutes=1))
    paid = decode_event_data(event.data, PaymentCompleted)
    receipt = {"order_id": order_id, "transaction_id": paid.transaction_id,
               "amount": paid.amount}
    await send_event(ctx, "payment.receipt", receipt, source=PAYMENT_SOURCE, subject=order_id)
    return {"status": "paid", **receipt}


async def main() -> None:
    """Run one payment embedded: the payment service's answer is published in-process."""
    async with App(database="payment_reply.db") as app:
        run_id = await payment_reply_workflow.start(app, "ORD-7", 42.0)
        await app.publish("payment.completed", {"order_id": "ORD-7", "transaction_id": "TXN-7",
                                                "amount": 42.0})
        print(json.dumps(await app.result(run_id, timeout=30)))


if __name__ == "__main__":
    asyncio.run(main())
