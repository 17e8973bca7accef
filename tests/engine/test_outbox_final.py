"""The outbox gives up on what cannot succeed: a 4xx answer (but 408 and 429) marks the
entry dead, counted and listed, retriable by hand; other failures are retried with backoff.
Headers come from the CloudEvents HTTP binding: every attribute percent-encoded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from multidict import CIMultiDict

from kenning import WorkflowContext, send_event, workflow
from kenning.runtime.outbox import OutboxDispatcher, is_final
from kenning.runtime.sink_parsing import parse_binary

from .conftest import AppFactory


@workflow
async def emits(ctx: WorkflowContext, subject: str) -> str:
    return await send_event(ctx, "order.noticed", {"n": 1}, subject=subject,
                            source="/shop/café", extensions={"region": "zürich 1"})


@dataclass
class Target:
    """An HTTP receiver that answers what ``answers`` says (then 202) and keeps requests."""

    url: str = ""
    answers: list[int] = field(default_factory=list)
    received: list[tuple[CIMultiDict[str], bytes]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    """A running ``Target``."""
    state = Target()

    async def handler(request: web.Request) -> web.Response:
        status = state.answers.pop(0) if state.answers else 202
        state.statuses.append(status)
        if status == 202:
            state.received.append((CIMultiDict(request.headers), await request.read()))
        return web.json_response({"status": status}, status=status)

    server = web.Application()
    server.router.add_post("/", handler)
    runner = web.AppRunner(server)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    yield state
    await runner.cleanup()


async def _until(condition: object, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.02)


def test_which_answers_are_final() -> None:
    assert [s for s in (400, 401, 403, 404, 405, 409, 410, 413, 415, 422) if is_final(s)] == \
        [400, 401, 403, 404, 405, 409, 410, 413, 415, 422]
    assert not any(is_final(s) for s in (200, 202, 302, 408, 429, 500, 502, 503))


def test_backoff_is_capped_and_jittered() -> None:
    dispatcher = OutboxDispatcher(store=None, publisher=None,  # type: ignore[arg-type]
                                  first_backoff=0.5, max_backoff=60)
    assert 0.25 <= dispatcher.backoff(0) <= 0.5
    late = [dispatcher.backoff(40) for _ in range(50)]
    assert max(late) <= 60 and min(late) >= 30 and len(set(late)) > 1


async def test_a_4xx_answer_makes_the_entry_dead_until_retried_by_hand(
    make_app: AppFactory, target: Target
) -> None:
    target.answers = [400]
    async with make_app([emits], event_target=target.url) as app:
        run_id = await emits.start(app, "s")
        await app.result(run_id, timeout=10)
        await _until(lambda: target.statuses == [400])
        await _until(lambda: app.metrics.outbox_dead._value.get() == 1)
        [dead] = await app.store.list_outbox(dead=True)
        assert dead.run_id == run_id and "answered 400" in (dead.last_error or "")
        await asyncio.sleep(1.0)
        assert target.statuses == [400], "a dead entry is not retried"
        assert await app.store.revive_outbox([dead.pk]) == 1
        await _until(lambda: target.received)
        assert await app.store.count_outbox() == 0
        assert await app.store.count_outbox(dead=True) == 0


async def test_5xx_408_and_429_are_retried_and_headers_are_percent_encoded(
    make_app: AppFactory, target: Target
) -> None:
    target.answers = [500, 429, 408]
    async with make_app([emits], event_target=target.url) as app:
        await emits.start(app, "a b\u00e9\"%")
        await _until(lambda: target.received, timeout=20)
        assert target.statuses == [500, 429, 408, 202]
        assert app.metrics.outbox_failures._value.get() == 3
        assert await app.store.count_outbox(dead=True) == 0
    headers, body = target.received[0]
    assert headers["ce-source"] == "/shop/caf%C3%A9"
    assert headers["ce-subject"] == "a%20b%C3%A9%22%25"
    assert headers["ce-region"] == "z%C3%BCrich%201"
    assert all(value.isascii() for value in headers.values())
    record = parse_binary(headers, body)  # the sink reads back exactly what was sent
    assert (record.source, record.subject) == ("/shop/café", "a b\u00e9\"%")
    assert record.extensions["region"] == "zürich 1" and record.data == '{"n":1}'
