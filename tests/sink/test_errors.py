"""Invalid, oversized and unsupported requests, and a store that fails: never a 2xx."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

import pytest

from kenning.core.models import AcceptResult, CloudEventRecord
from kenning.core.store import Store
from tests.sink.conftest import BATCH, STRUCTURED, Sink, SinkFactory, binary_headers, event


async def _post_structured(sink: Sink, body: Any) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    async with sink.post(data=data, headers={"Content-Type": STRUCTURED}) as resp:
        assert resp.content_type == "application/json"
        return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ("{not json", "not valid JSON"),
        (b"\xff\xfe{}", "not UTF-8"),
        ('{"data": NaN, "specversion": "1.0"}', "NaN"),
        ("[]", "must be a JSON object"),
        ({k: v for k, v in event().items() if k != "id"}, "'id'"),
        ({k: v for k, v in event().items() if k != "source"}, "'source'"),
        ({k: v for k, v in event().items() if k != "type"}, "'type'"),
        ({k: v for k, v in event().items() if k != "specversion"}, "'specversion'"),
        (event(specversion="0.3"), "'specversion'"),
        (event(specversion=1.0), "'specversion'"),
        (event(id=""), "'id'"),
        (event(id=5), "'id'"),
        (event(subject=""), "'subject'"),
        (event(subject="a\nb"), "'subject'"),
        (event(time="yesterday"), "'time'"),
        (event(time="2024-05-01"), "'time'"),
        (event(time="2024-05-01T12:30:00"), "'time'"),  # no offset
        (event(time="20240501T123000Z"), "'time'"),  # ISO 8601 basic, not RFC 3339
        (event(time="2024-13-01T12:30:00Z"), "'time'"),
        (event(time=1714566600), "'time'"),
        (event(Priority="x"), "'Priority'"),
        (event(**{"my-ext": "x"}), "'my-ext'"),
        (event(abcdefghijklmnopqrstu="x"), "'abcdefghijklmnopqrstu'"),
        (event(ext={"nested": 1}), "'ext'"),
        (event(ext=1.5), "'ext'"),
        (event(data={"a": 1}, data_base64="AAAA"), "'data_base64'"),
        (event(data_base64="not base64!"), "'data_base64'"),
        (event(type="kenning.child.finished"), "reserved"),
    ],
)
async def test_invalid_structured_event_is_400_naming_the_problem(
    sink: Sink, store: Store, body: Any, named: str
) -> None:
    status, answer = await _post_structured(sink, body)
    assert status == 400
    assert named in answer["error"]
    assert await store.count_events() == 0


async def test_extension_name_of_twenty_characters_is_fine(sink: Sink) -> None:
    status, _ = await _post_structured(sink, event(abcdefghijklmnopqrst="x"))
    assert status == 202


@pytest.mark.parametrize(
    ("headers", "body", "named"),
    [
        ({"ce-id": ""}, b"", "'id'"),
        ({"ce-specversion": "0.3"}, b"", "'specversion'"),
        ({"ce-time": "not-a-time"}, b"", "'time'"),
        ({"ce-Bad_Name": "x"}, b"", "'bad_name'"),
        ({"Content-Type": "application/json"}, b"{broken", "not valid JSON"),
    ],
)
async def test_invalid_binary_event_is_400(
    sink: Sink, store: Store, headers: dict[str, str], body: bytes, named: str
) -> None:
    async with sink.post(data=body, headers=binary_headers(**headers)) as resp:
        assert resp.status == 400
        assert named in (await resp.json())["error"]
    assert await store.count_events() == 0


async def test_binary_without_required_header_is_400(sink: Sink) -> None:
    headers = binary_headers()
    del headers["ce-source"]
    async with sink.post(headers=headers) as resp:
        assert resp.status == 400
        assert "'source'" in (await resp.json())["error"]


async def test_batch_that_is_not_an_array_is_400(sink: Sink) -> None:
    async with sink.post(data=json.dumps(event()), headers={"Content-Type": BATCH}) as resp:
        assert resp.status == 400
        assert "array" in (await resp.json())["error"]


async def test_too_large_by_content_length_is_413(start_sink: SinkFactory, store: Store) -> None:
    sink = await start_sink(max_body_bytes=1000)
    body = json.dumps(event(data={"pad": "x" * 2000}))
    async with sink.post(data=body, headers={"Content-Type": STRUCTURED}) as resp:
        assert resp.status == 413
        assert "1000" in (await resp.json())["error"]
    assert await store.count_events() == 0


async def test_too_large_when_chunked_is_413(start_sink: SinkFactory, store: Store) -> None:
    sink = await start_sink(max_body_bytes=1000)

    async def chunks() -> Any:
        for _ in range(4):
            yield b" " * 500  # no Content-Length: the limit is found while reading

    async with sink.post(data=chunks(), headers={"Content-Type": STRUCTURED}) as resp:
        assert resp.status == 413
        assert "error" in await resp.json()
    assert await store.count_events() == 0


async def test_body_at_the_limit_is_accepted(start_sink: SinkFactory) -> None:
    body = json.dumps(event(data={"pad": ""}))
    sink = await start_sink(max_body_bytes=len(body))
    async with sink.post(data=body, headers={"Content-Type": STRUCTURED}) as resp:
        assert resp.status == 202


@pytest.mark.parametrize(
    "headers",
    [
        {"Content-Type": "text/plain"},
        {"Content-Type": "application/json"},  # JSON without ce-specversion: not binary mode
        {},
        {"Content-Type": "application/cloudevents+xml"},
        {"Content-Type": "application/cloudevents+xml", "ce-specversion": "1.0"},
    ],
)
async def test_unsupported_content_type_is_415(
    sink: Sink, headers: dict[str, str]
) -> None:
    async with sink.post(data=json.dumps(event()), headers=headers) as resp:
        assert resp.status == 415
        assert "structured mode" in (await resp.json())["error"]


async def test_store_unavailable_is_503(sink: Sink, store: Store) -> None:
    await store.close()
    status, answer = await _post_structured(sink, event())
    assert status == 503
    assert "unavailable" in answer["error"]
    async with sink.post(data=json.dumps([event()]), headers={"Content-Type": BATCH}) as resp:
        assert resp.status == 503


class _BrokenStore:
    """A store whose commit fails with a bug, not an outage."""

    async def accept_events(
        self, namespace: str, events: Sequence[CloudEventRecord]
    ) -> list[AcceptResult]:
        raise RuntimeError("boom")

    async def ping(self) -> None:
        return None


async def test_unexpected_store_error_is_500_and_logged(
    start_sink: SinkFactory, caplog: pytest.LogCaptureFixture
) -> None:
    sink = await start_sink(_BrokenStore())
    with caplog.at_level(logging.ERROR, logger="kenning.runtime.sink"):
        status, answer = await _post_structured(sink, event())
    assert status == 500
    assert "boom" not in answer["error"]  # internals stay in the log
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)
