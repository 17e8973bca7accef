"""A worker and a sink process on a PostgreSQL that is stopped (``-m immediate``) and frozen
(SIGSTOP) under load: every run started before, during and after completes, nothing is
restarted, the worker's ``/readyz`` says 503 while the database is away and 200 after."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from kenning import App, StoreUnavailable
from tests.conftest import free_port
from tests.pg_server import PgServer

pytestmark = pytest.mark.timeout(240)

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "sdk"), str(ROOT)])}
CLI = [sys.executable, "-m", "kenning.runtime.cli"]


@pytest.fixture
async def server() -> AsyncIterator[PgServer]:
    """A PostgreSQL server of this test's own (the test stops and freezes it). Durable: with
    fsync and synchronous_commit off, ``-m immediate`` loses commits already acknowledged
    (accepted events, claims), which no engine can survive."""
    pg = PgServer(durable=True)
    await asyncio.to_thread(pg.start)
    try:
        yield pg
    finally:
        await asyncio.to_thread(pg.stop)


class Probe:
    """Polls a ``/readyz`` all along and remembers what it answered, and when."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.answers: list[tuple[float, int]] = []
        self._task: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=8)) as http:
            while True:
                try:
                    async with http.get(self.url) as response:
                        self.answers.append((time.monotonic(), response.status))
                except (aiohttp.ClientError, TimeoutError):
                    self.answers.append((time.monotonic(), 0))
                await asyncio.sleep(0.2)

    def start(self) -> None:
        """Start polling."""
        self._task = asyncio.create_task(self._poll())

    async def stop(self) -> None:
        """Stop polling."""
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def between(self, start: float, end: float) -> set[int]:
        """Statuses answered between two moments."""
        return {status for moment, status in self.answers if start <= moment <= end}

    async def wait_for(self, status: int, timeout: float) -> float:
        """Wait until the probe answers ``status``; return when it did."""
        since = time.monotonic()
        deadline = since + timeout
        while time.monotonic() < deadline:
            for moment, seen in self.answers:
                if moment >= since and seen == status:
                    return moment
            await asyncio.sleep(0.05)
        recent = [(round(m - since, 1), s) for m, s in self.answers if m >= since]
        raise AssertionError(f"{self.url} did not answer {status} within {timeout}s: {recent}")


async def _retrying(attempt: object) -> object:
    """Call ``attempt()`` until it stops raising ``StoreUnavailable``."""
    while True:
        try:
            return await attempt()  # type: ignore[operator]
        except StoreUnavailable:
            await asyncio.sleep(0.1)


class Driver:
    """Starts ``outage_flow`` runs and sends each its event through the sink, retrying
    whatever the outage refuses (a start that fails, a 503)."""

    def __init__(self, client: App, sink_url: str, http: aiohttp.ClientSession) -> None:
        self.client = client
        self.sink_url = sink_url
        self.http = http
        self.expected: dict[str, int] = {}
        self.accepted: list[str] = []
        self.sink_statuses: set[int] = set()

    async def run_one(self, run_id: str, n: int) -> None:
        """Start a run and deliver its event."""
        async with asyncio.timeout(60):
            await _retrying(lambda: self.client.start("outage_flow", n, run_id=run_id))
        self.expected[run_id] = n + 2 + n % 5
        event_id = str(uuid.uuid4())
        headers = {"ce-specversion": "1.0", "ce-type": "outage.go", "ce-source": "/outage",
                   "ce-id": event_id, "ce-kenningrun": run_id,
                   "content-type": "application/json"}
        body = f'{{"add": {n % 5}}}'.encode()
        async with asyncio.timeout(60):
            while True:
                try:
                    async with self.http.post(self.sink_url, data=body,
                                              headers=headers) as response:
                        self.sink_statuses.add(response.status)
                        if response.status == 202:
                            self.accepted.append(event_id)
                            return
                        assert response.status == 503, await response.text()
                except (aiohttp.ClientError, TimeoutError):
                    self.sink_statuses.add(0)
                await asyncio.sleep(0.1)

    def launch(self, prefix: str, count: int) -> list[asyncio.Task[None]]:
        """Start ``count`` runs concurrently (as tasks)."""
        base = len(self.expected) + 1000 * len(prefix)
        return [asyncio.create_task(self.run_one(f"{prefix}-{i}", base + i))
                for i in range(count)]

    async def check_all_complete(self, timeout: float = 90) -> None:
        """Every run started finished with the expected result."""
        try:
            async with asyncio.timeout(timeout):
                for run_id, expected in self.expected.items():
                    result = await _retrying(lambda r=run_id: self.client.result(r))
                    assert result == expected, run_id
        except TimeoutError:
            stuck = [(r.run_id, r.status.value, r.error, r.wait)
                     for r in await self.client.store.list_runs(limit=1000)
                     if r.run_id in self.expected and r.status.value != "completed"]
            raise AssertionError(f"runs not finished after {timeout}s: {stuck}") from None


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([*CLI, *args], env=ENV, stdout=out, stderr=subprocess.STDOUT)


async def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        async with asyncio.timeout(30):
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    async with http.get(url) as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)


async def test_worker_and_sink_ride_out_a_stop_and_a_freeze_of_postgresql(
    server: PgServer, tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    dsn = server.dsn("postgres")
    sink_port, probe_port = free_port(), free_port()
    async with App(dsn, worker=False):  # migrate before the processes start
        pass
    worker_log, sink_log = tmp_path / "worker.log", tmp_path / "sink.log"
    worker = _spawn(["worker", "--module", str(HERE / "outage_flows.py"), "--database", dsn,
                     "--worker-id", "w-outage", "--probe-port", str(probe_port),
                     "--probe-host", "127.0.0.1"], worker_log)
    sink = _spawn(["sink", "--database", dsn, "--port", str(sink_port)], sink_log)
    processes.extend([worker, sink])
    base = f"http://127.0.0.1:{probe_port}"
    await _wait_ready(f"{base}/readyz", worker, worker_log)
    await _wait_ready(f"http://127.0.0.1:{sink_port}/readyz", sink, sink_log)
    probe = Probe(f"{base}/readyz")
    probe.start()
    async with App(dsn, worker=False) as client, aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=20)) as http:
        driver = Driver(client, f"http://127.0.0.1:{sink_port}/", http)

        # 1. stopped with -m immediate under load
        before = driver.launch("stop-before", 30)
        await asyncio.sleep(0.3)
        down_at = time.monotonic()
        await asyncio.to_thread(server.pg_ctl_stop, "immediate")
        during = driver.launch("stop-during", 10)
        await probe.wait_for(503, timeout=20)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(server.pg_ctl_start)
        back_at = time.monotonic()
        ready_at = await probe.wait_for(200, timeout=30)
        after = driver.launch("stop-after", 10)
        await asyncio.gather(*before, *during, *after)
        await driver.check_all_complete()
        served_at = time.monotonic()
        assert 503 in probe.between(down_at, back_at)
        assert ready_at - back_at < 15, "ready again within seconds of the database"

        # 2. frozen (SIGSTOP of the postmaster and its backends), then thawed
        before = driver.launch("freeze-before", 20)
        await asyncio.sleep(0.3)
        frozen_at = time.monotonic()
        pids = await asyncio.to_thread(server.freeze)
        try:
            during = driver.launch("freeze-during", 5)
            await probe.wait_for(503, timeout=20)
        finally:
            await asyncio.to_thread(server.thaw, pids)
        thawed_at = time.monotonic()
        await probe.wait_for(200, timeout=30)
        after = driver.launch("freeze-after", 5)
        await asyncio.gather(*before, *during, *after)
        await driver.check_all_complete()
        assert 503 in probe.between(frozen_at, thawed_at + 1)

        stored = set(server.psql("SELECT id FROM events").split())
        assert set(driver.accepted) <= stored, "every accepted event is in the database"
    await probe.stop()
    assert driver.sink_statuses <= {202, 503, 0}, "the sink never answered 500"
    assert worker.poll() is None and sink.poll() is None, "nothing was restarted"
    print(f"runs served {served_at - back_at:.1f}s after the database came back")

    worker_output = worker_log.read_text()
    assert worker_output.count("claiming runs failed") <= 2, "the outage is logged once"
    assert "claiming runs works again" in worker_output
    worker.send_signal(signal.SIGTERM)
    sink.send_signal(signal.SIGTERM)
    assert worker.wait(20) == 0, worker_log.read_text()
    assert sink.wait(20) == 0, sink_log.read_text()
    assert "Traceback" not in worker_log.read_text()
