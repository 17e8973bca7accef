"""Stopping is prompt whatever is still reachable: ``kenning operator`` exits within a few
seconds of SIGTERM with the API server and the database gone (kopf retrying its watch, the
store's loops reconnecting), and an embedded operator stops as fast."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import kmock
import pytest

from tests.conftest import free_port
from tests.operator.conftest import REPO, Operators, eventually
from tests.operator.emulator import Emulator
from tests.operator.kube_helpers import POOLS, RUNS, apply, pool_body, run_body, status
from tests.pg_server import PgServer

PROMPT = 4.0
"""Seconds from the stop to the exit, at most (kopf alone waits 5 s at its exit for tasks
it did not start, such as the store's LISTEN health check, unless the store closes first)."""


@pytest.fixture
async def own_server() -> AsyncIterator[PgServer]:
    """A PostgreSQL server of this test's own, to stop."""
    server = PgServer()
    await asyncio.to_thread(server.start)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def _busy_operator_world(api: Emulator) -> None:
    """A pool and a run, so that every loop has something to do."""
    await apply(api, POOLS, pool_body("flows", ["op_approval"]))
    await apply(api, RUNS, run_body("r1", "op_approval", {"order_id": "1"}))
    await eventually(lambda: status(api, "r1").get("phase") == "Pending", what="Pending")


async def test_sigterm_exits_promptly_with_the_api_server_and_the_store_gone(
        own_server: PgServer, tmp_path: Path) -> None:
    dsn = own_server.dsn(await asyncio.to_thread(own_server.create_database))
    api = Emulator()
    server = kmock.Server(api)
    await api.__aenter__()
    await server.__aenter__()
    api.declare_kenning()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": str(api.url)}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "u"}}]}))
    port = free_port()
    log_path = tmp_path / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig),
           "PYTHONPATH": os.pathsep.join([str(REPO / "sdk"), str(REPO / "operator"), str(REPO)])}
    with log_path.open("ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kenning.runtime.cli", "operator", "--database", dsn,
            "--probe-host", "127.0.0.1", "--probe-port", str(port), cwd=str(REPO), env=env,
            stdout=log, stderr=log)
    try:
        async with aiohttp.ClientSession() as http:
            async def ready() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False
            async with asyncio.timeout(30):
                while not await ready():
                    assert proc.returncode is None, log_path.read_text()
                    await asyncio.sleep(0.1)
        await _busy_operator_world(api)

        # Both gone: the API server refuses connections, PostgreSQL is down.
        await api.go_away()
        await asyncio.to_thread(own_server.pg_ctl_stop, "immediate")
        await asyncio.sleep(3.0)  # kopf's watch retries, the store's loops reconnect
        began = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            code = await proc.wait()
        took = time.monotonic() - began
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await server.__aexit__(None, None, None)
        await api.__aexit__(None, None, None)
    assert took < PROMPT, f"{took:.1f}s from SIGTERM to exit\n{log_path.read_text()[-3000:]}"
    assert code == 0, log_path.read_text()[-3000:]


async def test_an_embedded_operator_stops_promptly_with_the_api_server_gone(
        pg_dsn: str) -> None:
    api = Emulator()
    server = kmock.Server(api)
    await api.__aenter__()
    await server.__aenter__()
    api.declare_kenning()
    ops = Operators(api, pg_dsn)
    try:
        op = await ops.start()
        await _busy_operator_world(api)
        await api.go_away()
        await asyncio.sleep(3.0)
        began = time.monotonic()
        await ops.stop(op)
        took = time.monotonic() - began
    finally:
        for running in list(ops.started):
            await running.stop()
        await server.__aexit__(None, None, None)
        await api.__aexit__(None, None, None)
    assert took < PROMPT, f"{took:.1f}s to stop"
