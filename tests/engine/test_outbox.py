"""send_event: published if and only if its step commits, retried until the target accepts."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from kenning import RunStatus, WorkflowContext, activity, send_event, wait_event, workflow
from tests.conftest import wait_status

from .conftest import AppFactory


@workflow
async def buyer(ctx: WorkflowContext, order_id: str) -> Any:
    event = await wait_event(ctx, "order.confirmed", match={"data.order_id": order_id})
    return event.data


@workflow
async def seller(ctx: WorkflowContext, order_id: str) -> str:
    return await send_event(ctx, "order.confirmed", {"order_id": order_id}, subject=order_id)


async def test_one_workflow_wakes_another_through_the_embedded_router(
    make_app: AppFactory,
) -> None:
    async with make_app([buyer, seller]) as app:
        waiting = await buyer.start(app, "O-1")
        await wait_status(app, waiting, RunStatus.WAITING_FOR_EVENT)
        sender = await seller.start(app, "O-1")
        event_id = await app.result(sender, timeout=5)
        assert await app.result(waiting, timeout=5) == {"order_id": "O-1"}
        history = await app.history(sender)
        assert history[0].name == "order.confirmed" and event_id in (history[0].value or "")


@activity
async def explode(ctx: WorkflowContext) -> None:
    raise RuntimeError("after the send step, before anything else")


@workflow
async def sends_then_fails(ctx: WorkflowContext) -> None:
    await send_event(ctx, "first", {"n": 1})
    await explode(ctx)


async def test_events_go_out_over_http_with_retries(make_app: AppFactory) -> None:
    received: list[dict[str, str]] = []
    bodies: list[bytes] = []
    answers = [500, 202]

    async def handler(request: web.Request) -> web.Response:
        status = answers.pop(0) if answers else 202
        if status == 202:
            received.append(dict(request.headers))
            bodies.append(await request.read())
        return web.json_response({"status": status}, status=status)

    server = web.Application()
    server.router.add_post("/", handler)
    runner = web.AppRunner(server)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with make_app([sends_then_fails], event_target=f"http://127.0.0.1:{port}/") as app:
            run_id = await sends_then_fails.start(app)
            async with asyncio.timeout(10):
                while not received:
                    await asyncio.sleep(0.05)
            headers = received[0]
            assert headers["ce-type"] == "first" and headers["ce-specversion"] == "1.0"
            assert headers["ce-source"].endswith(f"/runs/{run_id}")
            assert bodies == [b'{"n":1}']
            assert answers == []  # the 500 was retried
    finally:
        await runner.cleanup()
