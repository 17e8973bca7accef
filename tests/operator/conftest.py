"""Fixtures of the operator tests: kmock as the API server, a real store (PostgreSQL, and
SQLite where a test asks for both), the operator running kopf in a thread of its own, and
``kenning worker`` / ``kenning sink`` processes as the pods would run them (killed at
teardown)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO / "operator") not in sys.path:
    sys.path.insert(0, str(REPO / "operator"))

from kmock._internal import enums  # noqa: E402

from kenning.core.store import Store  # noqa: E402
from kenning.stores import open_store  # noqa: E402
from kenning_operator.config import OperatorConfig  # noqa: E402
from kenning_operator.main import KenningOperator  # noqa: E402
from tests.conftest import free_port  # noqa: E402
from tests.operator.emulator import POOLS, RUNS, Emulator  # noqa: E402
from tests.pg_server import pg_dsn, pg_server  # noqa: E402, F401  (fixtures)

WAIT = 20.0
STOP_WAIT = 20.0
"""Bound on an operator's stop (it takes well under a second; each of its steps is bounded
by a few seconds)."""


@pytest.fixture
async def emulator() -> AsyncIterator[Emulator]:
    """A Kubernetes API emulator on a local port."""
    async with Emulator() as api, kmock.Server(api):
        api.declare_kenning()
        yield api


STORES = ["postgres", "sqlite"]


@pytest.fixture(params=STORES)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The store the operator, the sink and worker processes share: an empty PostgreSQL
    database (store changes cross processes by LISTEN/NOTIFY), or a SQLite file (the
    operator's sweep catches up with other processes' changes). A module narrows it with
    ``pytest.mark.parametrize("database", ["postgres"], indirect=True)``."""
    if request.param == "postgres":
        dsn: str = request.getfixturevalue("pg_dsn")
        return dsn
    return str(tmp_path / "kenning.db")


@pytest.fixture
async def store(database: str) -> AsyncIterator[Store]:
    """The test's own handle on the store the operator uses."""
    handle = open_store(database)
    await handle.open()
    yield handle
    await handle.close()


@dataclass
class Running:
    """An operator running in a thread with its own event loop (kopf cancels every task
    created in its loop after it started, pytest's included)."""

    operator: KenningOperator
    stop_flag: threading.Event
    thread: threading.Thread
    errors: list[BaseException]

    async def stop(self) -> None:
        """Stop it as SIGTERM would, within a bound."""
        self.stop_flag.set()
        await asyncio.to_thread(self.thread.join, STOP_WAIT)
        assert not self.thread.is_alive(), "the operator did not stop in time"
        if self.errors:
            raise self.errors[0]


@dataclass
class Operators:
    """Starts operators against the emulator; stops them all at teardown."""

    api: Emulator
    database: str
    started: list[Running] = field(default_factory=list)

    async def start(self, **options: Any) -> KenningOperator:
        """Start an operator and wait until kopf watches both resources."""
        config = OperatorConfig(database=self.database, api_server=str(self.api.url),
                                sweep_interval=0.2, **options)
        op = KenningOperator(config)
        op.scaler.interval = 0.2
        stop_flag = threading.Event()
        errors: list[BaseException] = []

        def main() -> None:
            try:
                asyncio.run(op.run(stop_flag=stop_flag))
            except BaseException as exc:  # reported by stop()
                errors.append(exc)

        watches_before = self._watches()
        thread = threading.Thread(target=main, name="test-operator", daemon=True)
        thread.start()
        running = Running(op, stop_flag, thread, errors)
        self.started.append(running)
        async with asyncio.timeout(WAIT):
            while not op.ready.is_set() or self._watches() - watches_before < 2:
                if errors:
                    raise errors[0]
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the watch stream subscribes just after its request
        return op

    def _watches(self) -> int:
        plurals = {RUNS.rsplit("/", 1)[1], POOLS.rsplit("/", 1)[1]}
        return sum(1 for r in self.api._requests if r.action == enums.action.WATCH
                   and r.resource is not None and r.resource.plural in plurals)

    async def stop(self, op: KenningOperator) -> None:
        """Stop one operator."""
        for running in self.started:
            if running.operator is op:
                self.started.remove(running)
                await running.stop()
                return


@pytest.fixture
async def operators(emulator: Emulator, database: str) -> AsyncIterator[Operators]:
    """Start operators with ``await operators.start()``."""
    ops = Operators(emulator, database)
    yield ops
    for running in list(ops.started):
        await running.stop()


Spawn = Callable[..., Awaitable[asyncio.subprocess.Process]]


async def _reap(procs: list[asyncio.subprocess.Process]) -> None:
    """Kill what is still running and wait for it (bounded)."""
    for proc in procs:
        if proc.returncode is None:
            proc.kill()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10):
                await proc.wait()


def _env(database: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "sdk"), str(REPO)]),
            "KENNING_DATABASE": database, **extra}


@pytest.fixture
async def spawn_worker(database: str, tmp_path: Path) -> AsyncIterator[Spawn]:
    """Start ``kenning worker --module tests.operator.flows --pool flows`` as the pod
    would."""
    procs: list[asyncio.subprocess.Process] = []

    async def spawn(worker_id: str = "pod-1", pool: str = "flows"
                    ) -> asyncio.subprocess.Process:
        log = (tmp_path / f"worker-{worker_id}.log").open("ab")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "kenning.runtime.cli", "worker", "--module",
            "tests.operator.flows", "--database", database, "--worker-id", worker_id,
            "--pool", pool,
            cwd=str(REPO), env=_env(database), stdout=log, stderr=log)
        procs.append(proc)
        return proc

    yield spawn
    await _reap(procs)


@dataclass
class Sink:
    """A ``kenning sink`` process on a local port; ``send`` POSTs a structured CloudEvent."""

    url: str
    process: asyncio.subprocess.Process

    async def send(self, type: str, data: Any, *, source: str = "/tests",
                   namespace: str = "default") -> None:
        """Deliver one CloudEvent over HTTP; the sink answers 202 once it is committed."""
        event = {"specversion": "1.0", "id": uuid.uuid4().hex, "source": source,
                 "type": type, "datacontenttype": "application/json", "data": data}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAIT)) as http, \
                http.post(f"{self.url}/namespaces/{namespace}", data=json.dumps(event),
                          headers={"Content-Type": "application/cloudevents+json"}) as resp:
            assert resp.status == 202, f"{resp.status}: {await resp.text()}"


@pytest.fixture
async def sink(database: str, tmp_path: Path) -> AsyncIterator[Sink]:
    """``kenning sink --database ...`` as its pod would run, ready to take events."""
    port = free_port()
    log_path = tmp_path / "sink.log"
    log = log_path.open("ab")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kenning.runtime.cli", "sink", "--database", database,
        "--host", "127.0.0.1", "--port", str(port), cwd=str(REPO), env=_env(database),
        stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + WAIT
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            while True:
                assert proc.returncode is None, f"the sink exited: {log_path.read_text()}"
                assert time.monotonic() < deadline, f"sink not ready: {log_path.read_text()}"
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with http.get(f"{url}/readyz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.05)
        yield Sink(url, proc)
    finally:
        await _reap([proc])


async def eventually(check: Callable[[], Any], timeout: float = WAIT,
                     what: str = "condition") -> Any:
    """Poll ``check`` until it returns something truthy (bounded)."""
    last: Any = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                last = check()
                if last:
                    return last
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: "
                             f"{last!r}") from None
