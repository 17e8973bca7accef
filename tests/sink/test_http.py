"""The sink's HTTP surface: methods, webhook handshake, probes, metrics, auth, namespaces."""

from __future__ import annotations

import json

import pytest

from kenning.core.errors import ConfigurationError
from kenning.core.store import Store
from kenning.runtime.sink import SINK_METRICS, create_sink_app, serve_sink
from tests.sink.conftest import BATCH, STRUCTURED, Sink, SinkFactory, event

EVENT_PATHS = ["/", "/namespaces/team-a"]


@pytest.mark.parametrize("path", EVENT_PATHS)
async def test_options_allows_post(sink: Sink, path: str) -> None:
    async with sink.request("OPTIONS", path) as resp:
        assert resp.status == 200
        assert resp.headers["Allow"] == "POST, OPTIONS"
        assert "WebHook-Allowed-Origin" not in resp.headers


@pytest.mark.parametrize("path", EVENT_PATHS)
async def test_options_webhook_handshake(sink: Sink, path: str) -> None:
    headers = {"WebHook-Request-Origin": "eventemitter.example.com",
               "WebHook-Request-Rate": "120"}
    async with sink.request("OPTIONS", path, headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["WebHook-Allowed-Origin"] == "eventemitter.example.com"
        assert resp.headers["WebHook-Allowed-Rate"] == "*"
        assert "POST" in resp.headers["Allow"]


@pytest.mark.parametrize("path", EVENT_PATHS)
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_other_methods_are_405(sink: Sink, path: str, method: str) -> None:
    async with sink.request(method, path) as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST, OPTIONS"
        assert "error" in await resp.json()


async def test_healthz(sink: Sink) -> None:
    async with sink.request("GET", "/healthz") as resp:
        assert resp.status == 200


async def test_readyz_follows_the_store(sink: Sink, store: Store) -> None:
    async with sink.request("GET", "/readyz") as resp:
        assert resp.status == 200
    await store.close()
    async with sink.request("GET", "/readyz") as resp:
        assert resp.status == 503
        answer = await resp.json()
        assert answer["status"] == "unavailable" and answer["reason"]
    async with sink.request("GET", "/healthz") as resp:
        assert resp.status == 200  # alive, just not ready


@pytest.mark.parametrize("namespace", ["Team-A", "team_a", "-team", "team-", "a" * 64, "a.b"])
async def test_invalid_namespace_is_400(sink: Sink, store: Store, namespace: str) -> None:
    async with sink.post(f"/namespaces/{namespace}", json=event(),
                         headers={"Content-Type": STRUCTURED}) as resp:
        assert resp.status == 400
        assert "namespace" in (await resp.json())["error"]
    assert await store.count_events() == 0


async def test_longest_valid_namespace(sink: Sink) -> None:
    async with sink.post(f"/namespaces/{'a' * 63}", json=event(),
                         headers={"Content-Type": STRUCTURED}) as resp:
        assert resp.status == 202


async def test_token_guards_post_only(start_sink: SinkFactory, store: Store) -> None:
    sink = await start_sink(token="s3cret")
    async with sink.post(json=event(), headers={"Content-Type": STRUCTURED}) as resp:
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert "error" in await resp.json()
    for wrong in ("Bearer nope", "Basic s3cret", "s3cret", "Bearer s3cret2"):
        headers = {"Content-Type": STRUCTURED, "Authorization": wrong}
        async with sink.post("/namespaces/team-a", json=event(), headers=headers) as resp:
            assert resp.status == 401
    assert await store.count_events() == 0
    headers = {"Content-Type": STRUCTURED, "Authorization": "Bearer s3cret"}
    async with sink.post(json=event(), headers=headers) as resp:
        assert resp.status == 202
    for path in ("/healthz", "/readyz", "/metrics"):
        async with sink.request("GET", path) as resp:
            assert resp.status == 200


async def test_metrics_count_outcomes(sink: Sink) -> None:
    headers = {"Content-Type": STRUCTURED}
    for _ in range(2):  # accepted, then duplicate
        async with sink.post(json=event(), headers=headers):
            pass
    async with sink.post(data=json.dumps([event("b1"), event("b2")]),
                         headers={"Content-Type": BATCH}):
        pass
    async with sink.post(data="{", headers=headers):
        pass
    async with sink.post(data="x", headers={"Content-Type": "text/plain"}):
        pass
    async with sink.request("GET", "/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        text = await resp.text()
    assert "kenning_sink_events_accepted_total 3.0" in text
    assert "kenning_sink_events_duplicate_total 1.0" in text
    assert 'kenning_sink_requests_rejected_total{reason="invalid_event"} 1.0' in text
    assert 'kenning_sink_requests_rejected_total{reason="unsupported_media_type"} 1.0' in text
    assert 'kenning_sink_requests_rejected_total{reason="store_unavailable"} 0.0' in text
    assert "kenning_sink_request_duration_seconds_count 5.0" in text
    assert "kenning_sink_batch_size_sum 4.0" in text


async def test_metrics_in_openmetrics_when_asked(sink: Sink) -> None:
    headers = {"Accept": "application/openmetrics-text; version=1.0.0"}
    async with sink.request("GET", "/metrics", headers=headers) as resp:
        assert resp.status == 200
        assert resp.content_type == "application/openmetrics-text"
        assert (await resp.text()).rstrip().endswith("# EOF")


async def test_two_apps_in_one_process_have_their_own_metrics(
    start_sink: SinkFactory,
) -> None:
    first, second = await start_sink(), await start_sink()
    assert first.app[SINK_METRICS].registry is not second.app[SINK_METRICS].registry
    async with first.post(json=event(), headers={"Content-Type": STRUCTURED}) as resp:
        assert resp.status == 202
    async with second.request("GET", "/metrics") as resp:
        assert "kenning_sink_events_accepted_total 0.0" in await resp.text()
    async with first.request("GET", "/metrics") as resp:
        assert "kenning_sink_events_accepted_total 1.0" in await resp.text()


@pytest.mark.parametrize(
    "options",
    [{"default_namespace": "Default"}, {"max_body_bytes": 0}, {"token": ""}],
)
def test_bad_options_are_configuration_errors(store: Store, options: dict[str, object]) -> None:
    with pytest.raises(ConfigurationError):
        create_sink_app(store, **options)  # type: ignore[arg-type]


async def test_serve_sink_on_a_busy_port_raises_and_cleans_up(
    sink: Sink, store: Store
) -> None:
    port = sink.runner.addresses[0][1]
    with pytest.raises(OSError):
        await serve_sink(create_sink_app(store), "127.0.0.1", port)
