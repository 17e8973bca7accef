"""The worker's probe server: ``/healthz`` (its loops run), ``/readyz`` (the store answers)
and ``/metrics`` (Prometheus), for Kubernetes probes and scrapes (``--probe-port``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final

from aiohttp import web

from kenning.core.errors import StoreUnavailable
from kenning.runtime.metrics import render_metrics

if TYPE_CHECKING:
    from kenning.runtime.app import App

log = logging.getLogger(__name__)

PROBE_TIMEOUT: Final = 5.0
"""Seconds the store gets to answer ``/readyz`` (and the outbox counts of ``/metrics``)."""


class StoreCheck:
    """Asks the store something with a deadline, one question at a time.

    A store that hangs (a frozen server) may also hang the clean-up of a cancelled query,
    so a question that overruns is not cancelled: it is left to finish in the background
    and the next check waits on the same one instead of piling up more.
    """

    def __init__(self, ask: Callable[[], Coroutine[Any, Any, Any]],
                 timeout: float = PROBE_TIMEOUT) -> None:
        self._ask = ask
        self.timeout = timeout
        self._task: asyncio.Task[Any] | None = None

    async def __call__(self) -> Any:
        """The answer; ``TimeoutError`` after ``timeout``, or what the store raised."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._ask(), name="kenning-store-check")
        task = self._task
        done, _ = await asyncio.wait({task}, timeout=self.timeout)
        if not done:
            raise TimeoutError(f"the store did not answer within {self.timeout:g}s")
        return task.result()

    async def close(self) -> None:
        """Cancel a question still in flight."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


async def readiness(check: StoreCheck) -> str | None:
    """``None`` when the store answers ``check`` in time, else why not."""
    try:
        await check()
    except (StoreUnavailable, TimeoutError) as exc:
        return str(exc)
    except Exception as exc:
        log.exception("readiness check failed")
        return f"{type(exc).__name__}: {exc}"
    return None


def create_probe_app(app: App) -> web.Application:
    """The probe endpoints of an open ``App`` as an aiohttp application."""
    probes = _Probes(app)
    web_app = web.Application()
    web_app.on_cleanup.append(probes.close)
    web_app.router.add_get("/healthz", probes.healthz)
    web_app.router.add_get("/readyz", probes.readyz)
    web_app.router.add_get("/metrics", probes.metrics)
    return web_app


async def start_runner(runner: web.AppRunner, host: str, port: int) -> web.AppRunner:
    """Set ``runner`` up and listen on ``host:port``; a failed start cleans it up again."""
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


async def serve_probes(app: App, host: str, port: int) -> web.AppRunner:
    """Serve the probe endpoints of ``app`` on ``host:port``; ``cleanup()`` the runner to stop."""
    runner = await start_runner(web.AppRunner(create_probe_app(app), access_log=None),
                                host, port)
    log.info("worker probes (/healthz, /readyz, /metrics) on %s", runner.addresses)
    return runner


def _json(status: int, payload: dict[str, str]) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload).encode(),
                        content_type="application/json")


class _Probes:
    def __init__(self, app: App) -> None:
        self.app = app
        self._ping = StoreCheck(lambda: app.store.ping())
        self._outbox = StoreCheck(self._count_outbox)

    async def close(self, web_app: web.Application) -> None:
        await self._ping.close()
        await self._outbox.close()

    async def _count_outbox(self) -> None:
        metrics = self.app.metrics
        metrics.outbox_backlog.set(await self.app.store.count_outbox())
        metrics.outbox_dead_entries.set(await self.app.store.count_outbox(dead=True))

    async def healthz(self, request: web.Request) -> web.Response:
        """200 while every loop runs; 503 naming the loop that died (restart the process)."""
        failure = self.app.failure
        if failure is None and self.app.alive:
            return _json(200, {"status": "ok"})
        return _json(503, {"status": "dead", "reason": str(failure or "a loop has stopped")})

    async def readyz(self, request: web.Request) -> web.Response:
        """200 when the store answers a ping within ``PROBE_TIMEOUT``, else 503 and why."""
        reason = await readiness(self._ping)
        if reason is None:
            return _json(200, {"status": "ready"})
        return _json(503, {"status": "unavailable", "reason": reason})

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text (or OpenMetrics when asked for); the outbox gauges are read from
        the store now, and keep their last value while it does not answer."""
        with contextlib.suppress(StoreUnavailable, TimeoutError):
            await self._outbox()
        body, content_type = render_metrics(self.app.metrics.registry,
                                            request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})
