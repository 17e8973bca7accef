"""CLI tests: click's runner on a temporary SQLite file, and real ``kenning`` processes."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from kenning import (
    App,
    RunStatus,
    WorkflowContext,
    WorkflowDefinition,
    activity,
    wait_event,
    workflow,
)
from kenning.runtime.cli import main
from kenning.runtime.worker import WorkerOptions

FAST = WorkerOptions(poll_interval=0.05, lease_seconds=5.0)
HERE = Path(__file__).parent
WORKFLOW_FILE = HERE / "cli_workflows.py"
_SETTINGS_VARS = ("PORT", "K_SINK")


# -- workflows of the seeded database (served in-process only) ----------------------------
@activity
async def cli_seed_double(ctx: WorkflowContext, x: int) -> int:
    """Twice ``x``."""
    return 2 * x


@workflow(name="cli_seed_ok")
async def cli_seed_ok(ctx: WorkflowContext, x: int) -> dict[str, int]:
    """Completes with ``{"doubled": 2x}``."""
    return {"doubled": await cli_seed_double(ctx, x)}


@workflow(name="cli_seed_boom")
async def cli_seed_boom(ctx: WorkflowContext, reason: str) -> None:
    """Fails with ``reason``."""
    raise RuntimeError(reason)


@workflow(name="cli_seed_wait")
async def cli_seed_wait(ctx: WorkflowContext, order_id: str) -> Any:
    """Waits for ``cli.seed.approved`` about this order and returns its data."""
    event = await wait_event(ctx, "cli.seed.approved", match={"data.order_id": order_id})
    return event.data


SEED_WORKFLOWS: list[WorkflowDefinition[Any, Any]] = [cli_seed_ok, cli_seed_boom, cli_seed_wait]


# -- environment ---------------------------------------------------------------------------
def clean_env() -> dict[str, str]:
    """The process environment without any Kenning setting."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("KENNING_") and k not in _SETTINGS_VARS}


@pytest.fixture(autouse=True)
def _no_kenning_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests see no KENNING_* variables of the machine they run on."""
    for name in list(os.environ):
        if name.startswith("KENNING_") or name in _SETTINGS_VARS:
            monkeypatch.delenv(name)


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    """A SQLite file path that does not exist yet."""
    return str(tmp_path / "kenning.db")


Invoke = Callable[..., Result]


@pytest.fixture
def cli() -> Invoke:
    """Run ``kenning ARGS...`` in-process: ``cli("runs", "list", "--database", db)``."""
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None
               ) -> Result:
        return runner.invoke(main, list(args), input=input, env=env, catch_exceptions=False)

    return invoke


# -- a database with runs in every state ----------------------------------------------------
@dataclass(frozen=True)
class Seeded:
    """The seeded database and its runs' ids."""

    database: str
    ok: str = "run-ok"
    boom: str = "run-boom"
    waiting: str = "run-wait"
    pending: str = "run-pending"


async def _seed(database: str) -> None:
    async with App(database, "seed-worker", workflows=SEED_WORKFLOWS,
                   worker_options=FAST) as app:
        await app.start(cli_seed_ok, 21, run_id="run-ok")
        await app.start(cli_seed_boom, "kaput", run_id="run-boom")
        await app.start(cli_seed_wait, "A1", run_id="run-wait")
        await app.start("cli_seed_unserved", run_id="run-pending", namespace="other")
        await app.wait_finished("run-ok", 10)
        await app.wait_finished("run-boom", 10)
        for _ in range(1000):
            if (await app.get_run("run-wait")).status is RunStatus.WAITING_FOR_EVENT:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("run-wait did not start waiting within 10s")


@pytest.fixture
def seeded(db_path: str) -> Seeded:
    """A database holding a completed, a failed, a waiting and a pending run."""
    asyncio.run(_seed(db_path))
    return Seeded(db_path)


class BackgroundApp:
    """An embedded App serving the seed workflows on its own thread and event loop."""

    def __init__(self, database: str) -> None:
        self.database = database
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()),
                                        name="cli-test-app", daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with App(self.database, "background-worker", workflows=SEED_WORKFLOWS,
                       worker_options=FAST):
            self._ready.set()
            await self._stop.wait()

    def start(self) -> None:
        """Start the thread and wait until the worker runs."""
        self._thread.start()
        assert self._ready.wait(10), "background app did not start"

    def stop(self) -> None:
        """Stop the worker and join the thread."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive(), "background app did not stop"


@pytest.fixture
def background_app(db_path: str) -> Iterator[BackgroundApp]:
    """A worker for the seed workflows, running while the test invokes the CLI."""
    app = BackgroundApp(db_path)
    app.start()
    try:
        yield app
    finally:
        app.stop()


# -- real processes --------------------------------------------------------------------------
def kenning_command() -> list[str]:
    """The installed ``kenning`` script next to this Python, else ``python -m``."""
    script = Path(sys.executable).with_name("kenning")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "kenning.runtime.cli"]


@dataclass
class Proc:
    """A ``kenning`` server process and the file its output goes to."""

    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        """Everything it printed so far."""
        return self.log.read_text(errors="replace")

    def wait_for_line(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Wait until the output matches ``pattern``; fail if the process exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.output())
            if found:
                return found
            if self.popen.poll() is not None:
                pytest.fail(f"process exited {self.popen.returncode}:\n{self.output()}")
            time.sleep(0.05)
        pytest.fail(f"no {pattern!r} within {timeout}s; output:\n{self.output()}")

    def url(self) -> str:
        """The sink's base URL, from the line it prints once it listens."""
        return self.wait_for_line(r"on (http://[\d.]+:\d+)").group(1)


Spawn = Callable[..., Proc]


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """Start ``kenning ARGS...`` processes; any still running at teardown are killed."""
    procs: list[Proc] = []

    def start(*args: str) -> Proc:
        log = tmp_path / f"kenning-{len(procs)}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen([*kenning_command(), *args], stdout=out,
                                     stderr=subprocess.STDOUT, env=clean_env(), cwd=tmp_path)
        proc = Proc(popen, log)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.popen.poll() is None:
            proc.popen.kill()
        proc.popen.wait(10)


def run_kenning(*args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run one ``kenning`` command as its own process and collect its output."""
    return subprocess.run([*kenning_command(), *args], capture_output=True, text=True,
                          env=clean_env(), timeout=timeout, check=False)


def wait_healthy(url: str, proc: Proc, timeout: float = 20.0) -> None:
    """Wait until ``GET <url>/healthz`` answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            pytest.fail(f"process exited {proc.popen.returncode}:\n{proc.output()}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    pytest.fail(f"{url}/healthz did not answer within {timeout}s:\n{proc.output()}")
