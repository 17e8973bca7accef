"""Structured, binary and batch mode over real HTTP: 202 only once the store holds the event."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime

from cloudevents.core.bindings.http import to_binary, to_structured
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from kenning.core.events import ReceivedEvent
from kenning.core.models import CloudEventRecord
from kenning.core.store import Store
from tests.sink.conftest import BATCH, STRUCTURED, Sink, SinkFactory, binary_headers, event

Stored = Callable[[], list[tuple[str, CloudEventRecord]]]

SEED_EVENT = (
    '{"specversion":"1.0","type":"payment.completed","source":"/payments","id":"evt-1",'
    '"datacontenttype":"application/json",'
    '"data":{"order_id":"ORD-123","transaction_id":"T-1","amount":10.5}}'
)


async def test_seed_curl_example_is_accepted_and_stored(
    sink: Sink, store: Store, stored: Stored
) -> None:
    async with sink.post("/", data=SEED_EVENT,
                         headers={"Content-Type": "application/cloudevents+json"}) as resp:
        assert resp.status == 202
        assert await resp.json() == {"status": "accepted"}
    assert await store.count_events() == 1
    [(namespace, record)] = stored()
    assert namespace == "default"
    assert (record.id, record.source, record.type) == ("evt-1", "/payments", "payment.completed")
    assert record.datacontenttype == "application/json"
    assert json.loads(record.data or "") == {
        "order_id": "ORD-123", "transaction_id": "T-1", "amount": 10.5}
    assert record.data_base64 is None and record.time is None and record.extensions == {}


async def test_structured_with_charset_time_and_extensions(sink: Sink, stored: Stored) -> None:
    body = event(time="2024-05-01T14:30:00.25+02:00", subject="ORD-9", kenningrun="run-1",
                 priority=3, urgent=True, dataschema="https://example.com/s.json",
                 data={"x": ["é", 1]})
    async with sink.post("/", data=json.dumps(body),
                         headers={"Content-Type": "application/cloudevents+json; charset=utf-8"}
                         ) as resp:
        assert resp.status == 202
    [(_, record)] = stored()
    assert record.time == "2024-05-01T14:30:00.250000+02:00"
    assert datetime.fromisoformat(record.time) == datetime(2024, 5, 1, 12, 30, 0, 250000, UTC)
    assert record.subject == "ORD-9"
    assert record.dataschema == "https://example.com/s.json"
    assert record.target_run == "run-1"
    assert record.extensions == {"kenningrun": "run-1", "priority": "3", "urgent": "true"}
    assert json.loads(record.data or "") == {"x": ["é", 1]}


async def test_structured_utc_time_is_stored_with_z(sink: Sink, stored: Stored) -> None:
    async with sink.post(json=event(time="2024-05-01t12:30:00z"),
                         headers={"Content-Type": STRUCTURED}) as resp:
        assert resp.status == 202
    assert stored()[0][1].time == "2024-05-01T12:30:00Z"


async def test_structured_data_base64_and_text_data(sink: Sink, stored: Stored) -> None:
    blob = base64.b64encode(b"\x00\x01binary").decode()
    async with sink.post(json=event("a", data_base64=blob),
                         headers={"Content-Type": STRUCTURED}) as resp:
        assert resp.status == 202
    # Text of a non-JSON type is kept as bytes, as binary mode keeps it.
    async with sink.post(json=event("b", datacontenttype="text/plain", data="hello"),
                         headers={"Content-Type": STRUCTURED}) as resp:
        assert resp.status == 202
    first, second = (record for _, record in stored())
    assert first.data is None and first.data_base64 == blob
    assert ReceivedEvent.from_record(first).data == b"\x00\x01binary"
    assert second.data is None and ReceivedEvent.from_record(second).data == b"hello"


async def test_duplicate_gets_202_and_changes_nothing(
    sink: Sink, store: Store, stored: Stored
) -> None:
    async with sink.post(json=event(data={"v": 1}), headers={"Content-Type": STRUCTURED}) as resp:
        assert (resp.status, await resp.json()) == (202, {"status": "accepted"})
    async with sink.post(json=event(data={"v": 2}), headers={"Content-Type": STRUCTURED}) as resp:
        assert (resp.status, await resp.json()) == (202, {"status": "duplicate"})
    assert await store.count_events() == 1
    assert json.loads(stored()[0][1].data or "") == {"v": 1}


async def test_binary_json_data(sink: Sink, stored: Stored) -> None:
    headers = binary_headers(**{"Content-Type": "application/json", "ce-subject": "a%20b%25",
                                "ce-time": "2024-05-01T12:30:00Z", "ce-kenningrun": "run-7"})
    async with sink.post("/", data=b'{"order_id": "ORD-1"}', headers=headers) as resp:
        assert resp.status == 202
        assert await resp.json() == {"status": "accepted"}
        assert not [h for h in resp.headers if h.lower().startswith("ce-")]
    [(_, record)] = stored()
    assert json.loads(record.data or "") == {"order_id": "ORD-1"}
    assert record.datacontenttype == "application/json"
    assert record.subject == "a b%"  # percent-decoded as the HTTP binding says
    assert record.time == "2024-05-01T12:30:00Z"
    assert record.extensions == {"kenningrun": "run-7"}


async def test_binary_other_content_type_is_base64(sink: Sink, stored: Stored) -> None:
    headers = binary_headers(**{"Content-Type": "application/octet-stream"})
    async with sink.post(data=b"\xff\x00raw", headers=headers) as resp:
        assert resp.status == 202
    [(_, record)] = stored()
    assert record.data is None
    assert base64.b64decode(record.data_base64 or "") == b"\xff\x00raw"
    assert record.datacontenttype == "application/octet-stream"


async def test_binary_without_body_has_no_data(sink: Sink, stored: Stored) -> None:
    async with sink.post(headers=binary_headers()) as resp:
        assert resp.status == 202
    [(_, record)] = stored()
    assert record.data is None and record.data_base64 is None and record.time is None


async def test_batch_accepts_all_and_counts_duplicates(sink: Sink, store: Store) -> None:
    async with sink.post(json=event("e0"), headers={"Content-Type": STRUCTURED}):
        pass
    batch = [event("e0"), event("e1", data={"n": 1}), event("e2"), event("e1")]
    async with sink.post(data=json.dumps(batch), headers={"Content-Type": BATCH}) as resp:
        assert resp.status == 202
        assert await resp.json() == {"status": "accepted", "accepted": 2, "duplicates": 2}
    assert await store.count_events() == 3


async def test_batch_is_all_or_nothing(sink: Sink, store: Store) -> None:
    batch = [event("e0"), event("e1"), {"specversion": "1.0", "type": "t", "source": "/s"}]
    async with sink.post(data=json.dumps(batch), headers={"Content-Type": BATCH}) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert "index 2" in error and "'id'" in error
    assert await store.count_events() == 0


async def test_empty_batch(sink: Sink, store: Store) -> None:
    async with sink.post(data="[]", headers={"Content-Type": BATCH}) as resp:
        assert resp.status == 202
        assert await resp.json() == {"status": "accepted", "accepted": 0, "duplicates": 0}
    assert await store.count_events() == 0


async def test_requests_made_by_the_cloudevents_sdk(sink: Sink, stored: Stored) -> None:
    fmt = JSONFormat()
    made = CloudEvent({"type": "order.shipped", "source": "/shop", "id": "sdk-1",
                       "datacontenttype": "application/json", "subject": "ORD-5",
                       "kenningrun": "run-3"}, {"order_id": "ORD-5"})
    binary = to_binary(made, fmt)
    async with sink.post(data=binary.body, headers=binary.headers) as resp:
        assert resp.status == 202
    made = CloudEvent({"type": "order.shipped", "source": "/shop", "id": "sdk-2"},
                      {"order_id": "ORD-6"})
    structured = to_structured(made, fmt)
    async with sink.post(data=structured.body, headers=structured.headers) as resp:
        assert resp.status == 202
    first, second = (record for _, record in stored())
    assert (first.id, first.subject, first.target_run) == ("sdk-1", "ORD-5", "run-3")
    assert json.loads(first.data or "") == {"order_id": "ORD-5"}
    assert first.time is not None and datetime.fromisoformat(first.time).tzinfo is not None
    assert second.id == "sdk-2" and json.loads(second.data or "") == {"order_id": "ORD-6"}


async def test_namespace_in_path(sink: Sink, stored: Stored) -> None:
    async with sink.post("/namespaces/team-a", json=event(),
                         headers={"Content-Type": STRUCTURED}) as resp:
        assert resp.status == 202
    assert stored()[0][0] == "team-a"


async def test_default_namespace_is_configurable(
    start_sink: SinkFactory, stored: Stored
) -> None:
    sink = await start_sink(default_namespace="payments")
    async with sink.post("/", json=event(), headers={"Content-Type": STRUCTURED}) as resp:
        assert resp.status == 202
    assert stored()[0][0] == "payments"
