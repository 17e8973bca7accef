"""Bad requests get a 4xx with a JSON reason, never a 500; overload and outages get 503 with
``Retry-After``; rejections are counted, and logged at debug (503s once per outage)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any

import pytest

from kenning import StoreOverloaded, StoreUnavailable
from kenning.core.models import AcceptResult, CloudEventRecord
from kenning.core.store import Store
from kenning.runtime.sink import SINK_METRICS
from kenning.runtime.sink_parsing import MAX_JSON_DEPTH
from tests.sink.conftest import BATCH, STRUCTURED, Sink, SinkFactory, binary_headers, event


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


def rejected(sink: Sink, reason: str) -> float:
    return sink.app[SINK_METRICS].requests_rejected.labels(reason=reason)._value.get()


async def _answer(response: Any) -> tuple[int, dict[str, Any]]:
    assert response.content_type == "application/json", await response.text()
    return response.status, await response.json()


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 990, 100_000])
async def test_nesting_beyond_the_limit_is_400_naming_it_in_every_mode(
    sink: Sink, store: Store, depth: int
) -> None:
    deep = "[" * depth + "]" * depth
    bodies = [  # (content type, body, extra headers, levels of the body)
        (STRUCTURED, '{"specversion": "1.0", "id": "a", "source": "/s", "type": "t", '
                     f'"data": {deep}}}', {}, depth + 1),
        (BATCH, f"[{deep}]", {}, depth + 1),
        ("application/json", deep, binary_headers("b"), depth),
    ]
    for content_type, body, extra, levels in bodies:
        headers = {"Content-Type": content_type, **extra}
        async with sink.post(data=body.encode(), headers=headers) as resp:
            status, answer = await _answer(resp)
        if levels <= MAX_JSON_DEPTH:
            assert status in (202, 400) and "limit" not in answer.get("error", "")
            continue
        assert status == 400, (content_type, answer)
        assert f"limit of {MAX_JSON_DEPTH} levels" in answer["error"]
    if depth > MAX_JSON_DEPTH:
        assert await store.count_events() == 0


async def test_data_nested_within_the_limit_is_accepted(sink: Sink) -> None:
    body = json.dumps(event(data=nested(MAX_JSON_DEPTH - 2)))
    async with sink.post(data=body, headers={"Content-Type": STRUCTURED}) as resp:
        assert resp.status == 202


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        ({"Content-Type": "application/json"}, b"\xff\xfe\xfd"),
        ({"Content-Type": "application/json; charset=utf-8"}, b'{"a": "\xc3"}'),
        ({"ce-time": "%ZZ"}, b""),
        ({"ce-id": "%00"}, b""),
        ({"ce-": "x"}, b""),
        ({"ce-source": ""}, b""),
        ({"ce-specversion": "1.0\u00e9".encode().decode("latin-1")}, b""),
    ],
)
async def test_odd_binary_requests_get_400(
    sink: Sink, headers: dict[str, str], body: bytes
) -> None:
    async with sink.post(data=body, headers={**binary_headers("x"), **headers}) as resp:
        status, answer = await _answer(resp)
    assert status == 400, answer
    assert answer["error"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [("POST", "/namespaces/", 404), ("POST", "/namespaces/a/b", 404), ("GET", "/nope", 404),
     ("POST", "/healthz", 405), ("DELETE", "/metrics", 405), ("GET", "/", 405),
     ("PUT", "/namespaces/x", 405)],
)
async def test_unknown_paths_and_methods_are_json(
    sink: Sink, method: str, path: str, status: int
) -> None:
    async with sink.request(method, path, data=b"{}") as resp:
        got, answer = await _answer(resp)
    assert got == status and answer["error"]
    if status == 405:
        assert resp.headers["Allow"]
    reason = "not_found" if status == 404 else "method_not_allowed"
    assert rejected(sink, reason) == 1


class _FailingStore:
    """Raises what it is told to on commit; counts attempts."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.release = asyncio.Event()
        self.waiting = 0

    async def accept_events(self, namespace: str, events: Sequence[CloudEventRecord]
                            ) -> list[AcceptResult]:
        if self.error is not None:
            raise self.error
        self.waiting += 1
        await self.release.wait()
        from kenning.core.models import AcceptOutcome
        return [AcceptResult(AcceptOutcome.ACCEPTED) for _ in events]

    async def ping(self) -> None:
        return None


async def test_store_errors_are_503_with_retry_after_and_logged_once(
    start_sink: SinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    store = _FailingStore(StoreUnavailable("the database is down"))
    sink = await start_sink(store)
    body = json.dumps(event())
    with caplog.at_level(logging.DEBUG, logger="kenning.runtime.sink"):
        for _ in range(20):
            async with sink.post(data=body, headers={"Content-Type": STRUCTURED}) as resp:
                status, _ = await _answer(resp)
                assert status == 503 and resp.headers["Retry-After"] == "2"
        store.error = StoreOverloaded("queue full", retry_after=2.5)
        async with sink.post(data=body, headers={"Content-Type": STRUCTURED}) as resp:
            assert resp.status == 503 and resp.headers["Retry-After"] == "3"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "the database is down" in warnings[0].getMessage()
    assert rejected(sink, "store_unavailable") == 20 and rejected(sink, "overloaded") == 1


async def test_requests_above_the_in_flight_bound_get_503_at_once(
    start_sink: SinkFactory,
) -> None:
    store = _FailingStore()
    sink = await start_sink(store, max_in_flight=3)
    body = json.dumps(event())

    async def post() -> int:
        async with sink.post(data=body, headers={"Content-Type": STRUCTURED}) as resp:
            return resp.status

    held = [asyncio.create_task(post()) for _ in range(3)]
    async with asyncio.timeout(5):
        while store.waiting < 3:
            await asyncio.sleep(0.01)
    async with asyncio.timeout(2):  # answered at once, not queued
        async with sink.post(data=body, headers={"Content-Type": STRUCTURED}) as resp:
            status, answer = await _answer(resp)
    assert status == 503 and resp.headers["Retry-After"] == "1"
    assert "3 requests" in answer["error"]
    store.release.set()
    assert await asyncio.gather(*held) == [202, 202, 202]
    async with sink.post(data=body, headers={"Content-Type": STRUCTURED}) as resp:
        assert resp.status == 202


async def test_bad_requests_are_logged_at_debug_only(
    sink: Sink, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="kenning.runtime.sink"):
        for _ in range(5):
            async with sink.post(data=b"{not json", headers={"Content-Type": STRUCTURED}):
                pass
    assert not [r for r in caplog.records if r.name == "kenning.runtime.sink"]
    assert rejected(sink, "invalid_event") == 5
