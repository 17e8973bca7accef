"""``kenning send``: the HTTP request it makes, and how it reports the answer."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from .conftest import Invoke


@dataclass
class Captured:
    """One request the capture server received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class CaptureServer:
    """An HTTP server on its own thread that records requests and answers as told."""

    status: int = 202
    answer: str = '{"status":"accepted"}'
    requests: list[Captured] = field(default_factory=list)
    url: str = ""

    def __post_init__(self) -> None:
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _handle(self, request: web.Request) -> web.Response:
        self.requests.append(Captured(request.method, request.path_qs,
                                      {k.lower(): v for k, v in request.headers.items()},
                                      await request.read()))
        return web.Response(status=self.status, text=self.answer,
                            content_type="application/json")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def __enter__(self) -> CaptureServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def server() -> Iterator[CaptureServer]:
    """A server answering 202 like the sink."""
    with CaptureServer() as srv:
        yield srv


def test_send_posts_a_binary_mode_cloudevent(cli: Invoke, server: CaptureServer) -> None:
    result = cli("send", "order.paid", "--data", '{"order_id": "A1", "amount": 9.5}',
                 "--source", "/tests", "--id", "ev-1", "--subject", "orders/A1",
                 "--run", "run-123", "-e", "tenant=acme", "--extension", "prio=7",
                 "--url", server.url)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == '{"status":"accepted"}'
    [req] = server.requests
    assert (req.method, req.path) == ("POST", "/")
    assert req.headers["ce-specversion"] == "1.0"
    assert req.headers["ce-type"] == "order.paid"
    assert req.headers["ce-source"] == "/tests"
    assert req.headers["ce-id"] == "ev-1"
    assert req.headers["ce-subject"] == "orders/A1"
    assert req.headers["ce-kenningrun"] == "run-123"
    assert req.headers["ce-tenant"] == "acme" and req.headers["ce-prio"] == "7"
    assert req.headers["ce-time"].endswith("Z")
    assert req.headers["content-type"] == "application/json"
    assert "authorization" not in req.headers
    assert json.loads(req.body) == {"order_id": "A1", "amount": 9.5}


def test_send_defaults(cli: Invoke, server: CaptureServer) -> None:
    assert cli("send", "ping", "--url", server.url).exit_code == 0
    assert cli("send", "ping", "--url", server.url).exit_code == 0
    first, second = server.requests
    assert first.headers["ce-source"] == "/kenning/cli"
    assert first.headers["ce-id"] != second.headers["ce-id"]  # a new id each time
    assert first.body == b""
    assert "content-type" not in first.headers or \
        first.headers["content-type"] == "application/octet-stream"


def test_send_to_a_namespace_with_a_token(cli: Invoke, server: CaptureServer) -> None:
    result = cli("send", "ping", "--namespace", "team-a", "--url", server.url + "/",
                 env={"KENNING_SINK_TOKEN": "s3cret"})
    assert result.exit_code == 0, result.output
    [req] = server.requests
    assert req.path == "/namespaces/team-a"
    assert req.headers["authorization"] == "Bearer s3cret"


def test_send_url_from_the_environment(cli: Invoke, server: CaptureServer) -> None:
    result = cli("send", "ping", env={"KENNING_SINK_URL": server.url})
    assert result.exit_code == 0, result.output
    assert len(server.requests) == 1


@pytest.mark.parametrize(("status", "code"), [(400, 1), (401, 1), (503, 4)])
def test_send_refused(cli: Invoke, status: int, code: int) -> None:
    with CaptureServer(status=status, answer='{"error": "ce-source is missing"}') as srv:
        result = cli("send", "ping", "--url", srv.url)
    assert result.exit_code == code
    assert result.stderr.startswith(f"error: the sink at {srv.url} ")
    assert f"({status}): " in result.stderr
    assert "ce-source is missing" in result.stderr


def test_send_without_a_sink_exits_4(cli: Invoke) -> None:
    result = cli("send", "ping", "--url", "http://127.0.0.1:9", "--timeout", "5")
    assert result.exit_code == 4
    assert result.stderr.startswith("error: cannot reach the sink at http://127.0.0.1:9")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(("flags", "message"), [
    (["--data", "{nope"], "not valid JSON"),
    (["-e", "novalue"], "'novalue' is not NAME=VALUE"),
    (["-e", "Bad_Name=1"], "must be 1-20 lowercase letters or digits"),
    (["-e", "source=x"], "'source' is a core attribute; use --source"),
])
def test_send_usage_errors(cli: Invoke, server: CaptureServer, flags: list[str],
                           message: str) -> None:
    result = cli("send", "ping", *flags, "--url", server.url)
    assert result.exit_code == 2
    assert message in result.stderr
    assert server.requests == []
