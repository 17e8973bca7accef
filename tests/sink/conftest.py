"""Sink tests: a real SQLite store and the sink served on 127.0.0.1 over real HTTP."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from kenning.core.events import record_from_json
from kenning.core.models import CloudEventRecord
from kenning.core.store import Store
from kenning.runtime.sink import create_sink_app, serve_sink
from kenning.stores import open_store

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"


def event(id: Any = "evt-1", **attributes: Any) -> dict[str, Any]:
    """A valid structured CloudEvent as a dict; keyword arguments add or replace attributes."""
    body: dict[str, Any] = {"specversion": "1.0", "type": "payment.completed",
                            "source": "/payments", "id": id}
    body.update(attributes)
    return body


def binary_headers(id: str = "evt-1", **extra: str) -> dict[str, str]:
    """The ``ce-*`` headers of a valid binary-mode event."""
    headers = {"ce-specversion": "1.0", "ce-type": "payment.completed",
               "ce-source": "/payments", "ce-id": id}
    headers.update(extra)
    return headers


@dataclass
class Sink:
    """A running sink and a client session pointed at it."""

    app: web.Application
    runner: web.AppRunner
    session: aiohttp.ClientSession
    url: str

    def post(self, path: str = "/", **kwargs: Any) -> Any:
        """``session.post`` relative to the sink."""
        return self.session.post(self.url + path, **kwargs)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """``session.request`` relative to the sink."""
        return self.session.request(method, self.url + path, **kwargs)


SinkFactory = Callable[..., Awaitable[Sink]]


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """A fresh SQLite file per test."""
    return tmp_path / "k.db"


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[Store]:
    """An open SQLite store (closing twice is harmless, so a test may close it early)."""
    opened = open_store(str(db_path))
    await opened.open()
    yield opened
    await opened.close()


@pytest.fixture
async def start_sink(store: Store) -> AsyncIterator[SinkFactory]:
    """Start a sink on a free port: ``await start_sink(token="s3cret")``."""
    started: list[Sink] = []

    async def start(store_: Store | None = None, **options: Any) -> Sink:
        app = create_sink_app(store_ if store_ is not None else store, **options)
        runner = await serve_sink(app, "127.0.0.1", 0)
        host, port = runner.addresses[0][:2]
        sink = Sink(app, runner, aiohttp.ClientSession(), f"http://{host}:{port}")
        started.append(sink)
        return sink

    yield start
    for sink in started:
        await sink.session.close()
        await sink.runner.cleanup()


@pytest.fixture
async def sink(start_sink: SinkFactory) -> Sink:
    """A sink with default options."""
    return await start_sink()


@pytest.fixture
def stored(db_path: Path) -> Callable[[], list[tuple[str, CloudEventRecord]]]:
    """Read back (namespace, record) of every committed event, oldest first."""

    def read() -> list[tuple[str, CloudEventRecord]]:
        conn = sqlite3.connect(db_path)
        try:
            rows = conn.execute("SELECT namespace, record FROM events ORDER BY pk").fetchall()
        finally:
            conn.close()
        return [(namespace, record_from_json(record)) for namespace, record in rows]

    return read
