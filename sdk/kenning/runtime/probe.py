"""The worker's probe server: ``/healthz`` (its loops run), ``/readyz`` (the store answers)
and ``/metrics`` (Prometheus), for Kubernetes probes and scrapes (``--probe-port``)."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Final

from aiohttp import web

from kenning.core.errors import StoreUnavailable
from kenning.runtime.metrics import render_metrics

if TYPE_CHECKING:
    from kenning.runtime.app import App

log = logging.getLogger(__name__)

PROBE_TIMEOUT: Final = 5.0
"""Seconds the store gets to answer ``/readyz`` (and the outbox counts of ``/metrics``)."""


def create_probe_app(app: App) -> web.Application:
    """The probe endpoints of an open ``App`` as an aiohttp application."""
    probes = _Probes(app)
    web_app = web.Application()
    web_app.router.add_get("/healthz", probes.healthz)
    web_app.router.add_get("/readyz", probes.readyz)
    web_app.router.add_get("/metrics", probes.metrics)
    return web_app


async def serve_probes(app: App, host: str, port: int) -> web.AppRunner:
    """Serve the probe endpoints of ``app`` on ``host:port``; ``cleanup()`` the runner to stop."""
    runner = web.AppRunner(create_probe_app(app), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("worker probes (/healthz, /readyz, /metrics) on %s", runner.addresses)
    return runner


def _json(status: int, payload: dict[str, str]) -> web.Response:
    return web.Response(status=status, body=json.dumps(payload).encode(),
                        content_type="application/json")


class _Probes:
    def __init__(self, app: App) -> None:
        self.app = app

    async def healthz(self, request: web.Request) -> web.Response:
        """200 while every loop runs; 503 naming the loop that died (restart the process)."""
        failure = self.app.failure
        if failure is None and self.app.alive:
            return _json(200, {"status": "ok"})
        return _json(503, {"status": "dead", "reason": str(failure or "a loop has stopped")})

    async def readyz(self, request: web.Request) -> web.Response:
        """200 when the store answers a ping within ``PROBE_TIMEOUT``, else 503 and why."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                await self.app.store.ping()
        except StoreUnavailable as exc:
            reason = str(exc)
        except TimeoutError:
            reason = f"the store did not answer within {PROBE_TIMEOUT:g}s"
        else:
            return _json(200, {"status": "ready"})
        return _json(503, {"status": "unavailable", "reason": reason})

    async def metrics(self, request: web.Request) -> web.Response:
        """Prometheus text (or OpenMetrics when asked for); the outbox gauges are read from
        the store now, and keep their last value while it does not answer."""
        metrics = self.app.metrics
        try:
            async with asyncio.timeout(PROBE_TIMEOUT):
                metrics.outbox_backlog.set(await self.app.store.count_outbox())
                metrics.outbox_dead_entries.set(await self.app.store.count_outbox(dead=True))
        except (StoreUnavailable, TimeoutError):
            pass
        body, content_type = render_metrics(metrics.registry, request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})
