"""Each entry point of the image, run as the image runs it: the installed `kenning` command
with the image's environment (KENNING_HOST=0.0.0.0, PORT), started as its own process, until
it answers its health probe (the worker, which serves no HTTP, until it completes a run)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import kmock
import pytest

from tests.chart.conftest import REPO
from tests.conftest import free_port
from tests.operator.emulator import Emulator

pytestmark = pytest.mark.timeout(90)

START_TIMEOUT = 30.0


def kenning_command() -> str:
    """The console script of the installed package (next to this Python), else on PATH."""
    here = Path(sys.executable).parent / "kenning"
    found = str(here) if here.is_file() else shutil.which("kenning")
    assert found, "the `kenning` command is not installed: pip install -e '.[dev]'"
    return found


def image_env(**extra: str) -> dict[str, str]:
    """The environment of the image (Dockerfile ENV), without the machine's Kenning settings."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KENNING_") and k not in ("PORT", "K_SINK", "KUBECONFIG")}
    env.update(PYTHONUNBUFFERED="1", PYTHONDONTWRITEBYTECODE="1", KENNING_HOST="0.0.0.0",
               PORT="8080")
    env.update(extra)
    return env


class Process:
    """A `kenning` process whose output is collected; SIGTERM at the end."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.output: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            self.output.append(line.decode(errors="replace"))

    def text(self) -> str:
        """What it printed so far."""
        return "".join(self.output)

    async def stop(self) -> int:
        """SIGTERM, then the exit code (SIGKILL after 15 s)."""
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        await self._reader
        return self.proc.returncode if self.proc.returncode is not None else -1


Spawn = Callable[..., Awaitable[Process]]


@pytest.fixture
async def spawn() -> AsyncIterator[Spawn]:
    """Start `kenning ARGS` processes; all are stopped at teardown."""
    started: list[Process] = []

    async def go(*args: str, env: dict[str, str]) -> Process:
        proc = await asyncio.create_subprocess_exec(
            kenning_command(), *args, env=env, cwd=REPO, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT)
        started.append(Process(proc))
        return started[-1]

    yield go
    for process in started:
        await process.stop()


async def wait_http_ok(process: Process, url: str) -> dict[str, object]:
    """Poll ``url`` until it answers 200; fail with the process's output otherwise."""
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT
    last = "no answer"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
        while asyncio.get_running_loop().time() < deadline:
            if process.proc.returncode is not None:
                break
            try:
                async with http.get(url) as response:
                    if response.status == 200:
                        body: dict[str, object] = await response.json(content_type=None)
                        return body
                    last = f"{response.status} {await response.text()}"
            except aiohttp.ClientError as exc:
                last = str(exc)
            await asyncio.sleep(0.1)
    await process.stop()
    pytest.fail(f"{url} did not answer 200 within {START_TIMEOUT:g}s (last: {last}); "
                f"exit code {process.proc.returncode}; output:\n{process.text()}")


async def kenning(*args: str, env: dict[str, str]) -> str:
    """Run a short `kenning` command; its stdout (fail on a non-zero exit)."""
    proc = await asyncio.create_subprocess_exec(
        kenning_command(), *args, env=env, cwd=REPO, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, f"kenning {' '.join(args)}: exit {proc.returncode}\n" \
        f"{out.decode()}{err.decode()}"
    return out.decode()


async def test_sink_answers_its_probes_on_port(spawn: Spawn, tmp_path: Path) -> None:
    port = free_port()
    env = image_env(PORT=str(port), KENNING_DATABASE=str(tmp_path / "sink.db"))
    sink = await spawn("sink", env=env)
    assert await wait_http_ok(sink, f"http://127.0.0.1:{port}/healthz")
    assert await wait_http_ok(sink, f"http://127.0.0.1:{port}/readyz")
    assert f"kenning sink on http://0.0.0.0:{port}" in sink.text()
    assert await sink.stop() == 0, sink.text()


async def test_worker_serves_a_module_and_completes_a_run(spawn: Spawn, tmp_path: Path) -> None:
    env = image_env(KENNING_DATABASE=str(tmp_path / "worker.db"))
    worker = await spawn("worker", "--module", "tests.chart.image_workflows",
                         "--worker-id", "image-worker", env=env)
    run_id = (await kenning("start", "image_smoke", "--input", '{"name": "image"}',
                            env=env)).strip()
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT
    run: dict[str, object] = {}
    while asyncio.get_running_loop().time() < deadline and worker.proc.returncode is None:
        run = json.loads(await kenning("runs", "show", run_id, "-o", "json", env=env))
        if run["status"] == "completed":
            break
        await asyncio.sleep(0.2)
    assert run.get("status") == "completed", \
        f"run {run_id} is {run.get('status')}; worker output:\n{worker.text()}"
    assert run["result"] == {"greeting": "hello image"}
    assert "kenning worker image-worker: serving image_smoke" in worker.text()
    assert await worker.stop() == 0, worker.text()


def kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig for a local API server without credentials."""
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "local",
        "clusters": [{"name": "local", "cluster": {"server": server}}],
        "users": [{"name": "local", "user": {}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": "local",
                                                   "namespace": "default"}}]}))
    return path


async def test_operator_answers_its_probes(spawn: Spawn, tmp_path: Path) -> None:
    help_text = await asyncio.create_subprocess_exec(
        kenning_command(), "operator", "--help", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await help_text.communicate()
    assert help_text.returncode == 0, (
        "`kenning operator` is not available, so the image's operator entry point (and the "
        f"chart's operator Deployment) cannot start:\n{out.decode()}")

    async with Emulator() as api, kmock.Server(api):
        api.declare_kenning()
        port = free_port()
        env = image_env(KENNING_DATABASE=str(tmp_path / "operator.db"),
                        KUBECONFIG=str(kubeconfig(tmp_path / "kubeconfig", str(api.url))))
        operator = await spawn("operator", f"--probe-port={port}", "--sweep-interval=1",
                               env=env)
        assert await wait_http_ok(operator, f"http://127.0.0.1:{port}/healthz")
        assert await wait_http_ok(operator, f"http://127.0.0.1:{port}/readyz") == \
            {"status": "ready"}
        metrics = await wait_http_ok_text(operator, f"http://127.0.0.1:{port}/metrics")
        assert "kenning_operator" in metrics
        assert await operator.stop() == 0, operator.text()


async def wait_http_ok_text(process: Process, url: str) -> str:
    """The body of a 200 answer of ``url``."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http, \
            http.get(url) as response:
        assert response.status == 200, f"{url}: {response.status}\n{process.text()}"
        return await response.text()
