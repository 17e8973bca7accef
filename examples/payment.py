"""Payment: an activity, then a wait for ``payment.completed``, decoded into a model.

Run the whole thing end to end (embedded, SQLite):

    python examples/payment.py

It starts a run for ORD-123, serves the CloudEvents sink on localhost:8001, posts the
payment event to it over HTTP (structured mode, as the curl below would) and prints the
run's result. With ``--serve`` it only starts the run and serves, so you can send the
event yourself:

    curl -X POST http://localhost:8001/ \\
      -H "Content-Type: application/cloudevents+json" \\
      -d '{"specversion":"1.0","type":"payment.completed","source":"payment-service",
           "id":"event-123","data":{"order_id":"ORD-123","transaction_id":"TXN-456",
           "amount":99.99}}'
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import uuid
from datetime import timedelta
from typing import Any

import aiohttp
from pydantic import BaseModel

from kenning import App, WorkflowContext, activity, decode_event_data, wait_event, workflow

log = logging.getLogger("examples.payment")


class PaymentCompleted(BaseModel):
    """The data of a ``payment.completed`` event."""

    order_id: str
    transaction_id: str
    amount: float


@activity
async def start_payment_processing(ctx: WorkflowContext, order_id: str) -> dict[str, Any]:
    """Ask the payment service to charge the order (idempotent on the key)."""
    return {"order_id": order_id, "payment_request": ctx.idempotency_key, "status": "requested"}


@workflow
async def payment_workflow(ctx: WorkflowContext, order_id: str) -> dict[str, Any]:
    """Request a payment, then wait up to five minutes for the provider to confirm it."""
    await start_payment_processing(ctx, order_id)
    event = await wait_event(ctx, "payment.completed", timeout=timedelta(minutes=5),
                             match={"data.order_id": order_id})
    paid = decode_event_data(event.data, PaymentCompleted)
    return {"status": "completed", "transaction_id": paid.transaction_id, "amount": paid.amount}


PAYMENT_EVENT = {
    "specversion": "1.0",
    "type": "payment.completed",
    "source": "payment-service",
    "id": "event-123",
    "datacontenttype": "application/json",
    "data": {"order_id": "ORD-123", "transaction_id": "TXN-456", "amount": 99.99},
}


async def post_payment_event(port: int) -> None:
    """POST the payment CloudEvent to the local sink, as the curl in the docstring does."""
    headers = {"content-type": "application/cloudevents+json"}
    async with aiohttp.ClientSession() as http:
        for _ in range(100):  # the sink may still be starting
            try:
                # a fresh id each time: the sink deduplicates on (source, id), so a second
                # demo run would otherwise post a duplicate that resumes nothing
                event = {**PAYMENT_EVENT, "id": f"event-{uuid.uuid4().hex[:8]}"}
                async with http.post(f"http://127.0.0.1:{port}/", data=json.dumps(event),
                                     headers=headers) as response:
                    print(f"sink answered {response.status} {await response.text()}")
                    return
            except aiohttp.ClientConnectionError:
                await asyncio.sleep(0.05)
    raise RuntimeError(f"the sink on port {port} did not come up")


async def main(serve_only: bool = False, port: int = 8001) -> None:
    """Start ORD-123's run, serve the sink, deliver the event and print the result."""
    async with App(database="event_demo.db") as app:
        run_id = await payment_workflow.start(app, "ORD-123")
        print(f"started run {run_id}: {(await app.get_run(run_id)).status.value}")
        if serve_only:
            await app.serve(port=port)
            return
        server = asyncio.create_task(app.serve(port=port))
        try:
            poster = asyncio.create_task(post_payment_event(port))
            await asyncio.wait([server, poster], return_when=asyncio.FIRST_COMPLETED)
            if server.done():  # the sink could not start: say why
                poster.cancel()
                server.result()
            await poster
            result = await app.result(run_id, timeout=30)
            print(f"run {run_id} completed: {json.dumps(result)}")
        finally:
            server.cancel()
            await asyncio.gather(server, return_exceptions=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(serve_only="--serve" in sys.argv, port=int(os.environ.get("PORT", "8001"))))
