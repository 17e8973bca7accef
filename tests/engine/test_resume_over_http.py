"""Waiting runs resumed by CloudEvents posted to the real sink over HTTP, in every mode."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from cloudevents.core.bindings.http import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from kenning import App, RunStatus, WorkflowContext, wait_event, workflow
from kenning.runtime.sink import create_sink_app, serve_sink
from tests.conftest import wait_status

from .conftest import AppFactory


@workflow
async def awaits_order(ctx: WorkflowContext, order_id: str) -> Any:
    event = await wait_event(ctx, "order.paid", match={"data.order_id": order_id})
    return {"data": event.data, "source": event.source}


@pytest.fixture
async def served(make_app: AppFactory) -> AsyncIterator[tuple[App, str]]:
    async with make_app([awaits_order], namespaces=["default", "prod"]) as app:
        runner = await serve_sink(create_sink_app(app.store), "127.0.0.1", 0)
        try:
            host, port = runner.addresses[0][:2]
            yield app, f"http://{host}:{port}"
        finally:
            await runner.cleanup()


async def start_waiting(app: App, order_id: str, namespace: str = "default") -> str:
    run_id = await app.start(awaits_order, order_id, namespace=namespace)
    await wait_status(app, run_id, RunStatus.WAITING_FOR_EVENT)
    return run_id


def event(order_id: str, event_id: str) -> dict[str, Any]:
    return {"specversion": "1.0", "type": "order.paid", "source": "/shop", "id": event_id,
            "datacontenttype": "application/json", "data": {"order_id": order_id}}


async def test_every_mode_resumes_its_run(served: tuple[App, str]) -> None:
    app, url = served
    runs = {mode: await start_waiting(app, mode)
            for mode in ("structured", "binary", "batch", "sdk-binary", "sdk-structured")}
    async with aiohttp.ClientSession() as http:
        async def post(body: bytes | str, headers: dict[str, str]) -> None:
            async with http.post(url + "/", data=body, headers=headers) as response:
                assert response.status == 202, await response.text()

        await post(json.dumps(event("structured", "e1")),
                   {"content-type": "application/cloudevents+json"})
        await post(json.dumps({"order_id": "binary"}),
                   {"ce-specversion": "1.0", "ce-type": "order.paid", "ce-source": "/shop",
                    "ce-id": "e2", "content-type": "application/json"})
        await post(json.dumps([event("batch", "e3")]),
                   {"content-type": "application/cloudevents-batch+json"})
        for mode, convert in (("sdk-binary", to_binary), ("sdk-structured", to_structured)):
            sdk_event = CloudEvent(attributes={"type": "order.paid", "source": "/shop",
                                               "id": f"sdk-{mode}",
                                               "datacontenttype": "application/json"},
                                   data={"order_id": mode})
            message = convert(sdk_event, JSONFormat())
            await post(message.body, dict(message.headers))
    for mode, run_id in runs.items():
        assert await app.result(run_id, timeout=5) == {
            "data": {"order_id": mode}, "source": "/shop"}


async def test_namespace_path_reaches_only_that_namespace(served: tuple[App, str]) -> None:
    app, url = served
    prod = await start_waiting(app, "N-1", namespace="prod")
    default = await start_waiting(app, "N-1")
    async with aiohttp.ClientSession() as http, http.post(
        url + "/namespaces/prod", data=json.dumps(event("N-1", "n1")),
        headers={"content-type": "application/cloudevents+json"}) as response:
        assert response.status == 202
    assert (await app.result(prod, timeout=5))["data"] == {"order_id": "N-1"}
    assert (await app.get_run(default)).status is RunStatus.WAITING_FOR_EVENT
