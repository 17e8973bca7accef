"""Fixtures for every test folder: a fake clock and a guard against leaked asyncio tasks."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from kenning import RunStatus


class FakeClock:
    """A wall clock the test moves by hand (unix seconds)."""

    def __init__(self, start: float | None = None) -> None:
        self.value = time.time() if start is None else start

    def __call__(self) -> float:
        return self.value

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self.value += seconds


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_status(app: Any, run_id: str, status: RunStatus, timeout: float = 5) -> None:
    """Poll an app or client until the run reaches ``status``."""
    async with asyncio.timeout(timeout):
        while (await app.get_run(run_id)).status is not status:
            await asyncio.sleep(0.01)


@pytest.fixture
def fake_clock() -> FakeClock:
    """A clock to inject into stores and apps."""
    return FakeClock()


@pytest.fixture(autouse=True)
async def no_leaked_tasks() -> AsyncIterator[None]:
    """Fail a test that leaves asyncio tasks running behind it."""
    before = set(asyncio.all_tasks())
    yield
    await asyncio.sleep(0)
    leaked = [t for t in asyncio.all_tasks() - before
              if not t.done() and t is not asyncio.current_task()]
    if leaked:
        for task in leaked:
            task.cancel()
        names = ", ".join(sorted(t.get_name() for t in leaked))
        pytest.fail(f"test left asyncio tasks running: {names}")
