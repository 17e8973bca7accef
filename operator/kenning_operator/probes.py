"""The operator's HTTP endpoints: ``/healthz`` (alive), ``/readyz`` (watching and the store
answers) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from kenning.core.store import Store
from kenning_operator.metrics import Metrics

log = logging.getLogger(__name__)


def probe_app(store: Store, metrics: Metrics, ready: threading.Event,
              alive: Callable[[], bool]) -> web.Application:
    """The aiohttp application of the probes."""
    async def healthz(request: web.Request) -> web.Response:
        if alive():
            return web.json_response({"status": "alive"})
        return web.json_response({"status": "stopped"}, status=503)

    async def readyz(request: web.Request) -> web.Response:
        if not ready.is_set():
            return web.json_response({"status": "starting"}, status=503)
        try:
            await asyncio.wait_for(store.ping(), 5.0)
        except Exception as exc:
            return web.json_response({"status": "store unreachable", "error": str(exc)},
                                     status=503)
        return web.json_response({"status": "ready"})

    async def metrics_view(request: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    return app


async def serve_probes(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Listen on ``host:port``; the caller cleans the runner up."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    log.info("probes and metrics on http://%s:%d", host, port)
    return runner
