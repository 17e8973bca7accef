"""The embedded ``App``: store, worker, outbox and (on ``serve``) the sink, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from kenning.core.definitions import Registry, WorkflowDefinition
from kenning.core.errors import ConfigurationError, LoopFailed
from kenning.core.models import ClaimScope
from kenning.runtime.client import Client, check_namespace
from kenning.runtime.outbox import HttpPublisher, OutboxDispatcher, Publisher, local_publisher
from kenning.runtime.tenancy import default_worker_id, unique_worker_id
from kenning.runtime.worker import Worker, WorkerOptions
from kenning.runtime.worker_metrics import WorkerMetrics
from kenning.stores import open_store

if TYPE_CHECKING:
    from aiohttp import web

log = logging.getLogger(__name__)

DEFAULT_PORT = 8001


class App(Client):
    """Kenning in one process: ``async with App(...) as app`` opens the store and starts the
    worker; ``await app.serve(port=8001)`` adds the CloudEvents sink and runs until cancelled.

    Args:
        database: a SQLite file path (default ``kenning.db``) or a ``postgresql://`` URL.
        worker_id: this process's identity for leases; default ``<hostname>-<pid>-<random>``.
            An id that still holds live leases (another process uses it) is not shared:
            the app takes a fresh one and logs so.
        namespace: the default namespace of started runs and of events posted to ``/``,
            and the namespace whose runs the worker executes.
        namespaces: the namespaces whose runs the worker executes (default: ``namespace``).
        pool: the worker's pool: it takes runs naming this pool or none (default: only runs
            naming no pool).
        build_id: the build (code version) of this worker: runs that started on another
            build are left to workers of that build unless marked ``upgrade="auto"``.
        drain: take no new runs, only those already started on ``build_id``.
        workflows: the workflows served; default every ``@workflow`` imported so far.
        worker: run the worker in this process (``False`` for a client or sink only).
        event_target: where ``send_event`` publishes: a URL, default ``$K_SINK``, else this
            app's own router.
        sink_token: when set, the sink requires ``Authorization: Bearer <token>``.
        probe_port: when set, serve the worker's ``/healthz``, ``/readyz`` and ``/metrics``
            on this port (0 picks a free one; see ``probe_address``).
        probe_host: the interface of the probe server.

    A store outage is ridden out by every loop; a loop that dies of anything else is kept
    in ``failure``, ``serve()`` and ``watch()`` raise it as ``LoopFailed``.
    """

    def __init__(
        self,
        database: str = "kenning.db",
        worker_id: str | None = None,
        *,
        namespace: str = "default",
        namespaces: Iterable[str] | None = None,
        pool: str | None = None,
        build_id: str | None = None,
        drain: bool = False,
        workflows: Iterable[WorkflowDefinition[Any, Any]] | None = None,
        worker: bool = True,
        event_target: str | None = None,
        sink_token: str | None = None,
        worker_options: WorkerOptions | None = None,
        event_retention: float = 86_400.0,
        clock: Callable[[], float] | None = None,
        probe_port: int | None = None,
        probe_host: str = "0.0.0.0",
    ) -> None:
        super().__init__(open_store(database, clock=clock, event_retention=event_retention),
                         namespace=namespace)
        self.database = database
        self.worker_id = worker_id or default_worker_id()
        served = tuple(check_namespace(ns) for ns in (namespaces or ()))
        if drain and not build_id:
            raise ConfigurationError("drain=True needs a build_id: a draining worker serves "
                                     "the runs already started on its build")
        self.scope = ClaimScope(namespaces=served or (self.namespace,), pool=pool or None,
                                build_id=build_id or None, drain=drain)
        self._workflows = None if workflows is None else list(workflows)
        self._run_worker = worker
        self._event_target = event_target if event_target is not None else os.environ.get("K_SINK")
        self._sink_token = sink_token
        self._worker_options = worker_options
        self._tasks: list[asyncio.Task[None]] = []
        self._http_publisher: HttpPublisher | None = None
        self.registry: Registry | None = None
        self.worker: Worker | None = None
        self.metrics = WorkerMetrics()
        self._probe_port = probe_port
        self._probe_host = probe_host
        self._probe: web.AppRunner | None = None
        self._failure: LoopFailed | None = None
        self._failed = asyncio.Event()

    async def __aenter__(self) -> App:
        await self.open()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the store and start the worker and outbox (when enabled)."""
        if self._workflows is not None or not self._run_worker:
            self.registry = Registry(self._workflows or ())
        else:
            self.registry = Registry.from_catalogue()
        await self.store.open()
        if self._run_worker:
            self.worker_id = await unique_worker_id(self.store, self.worker_id)
            self._start_worker(self.registry)
        if self._probe_port is not None:
            from kenning.runtime.probe import serve_probes

            try:
                self._probe = await serve_probes(self, self._probe_host, self._probe_port)
            except BaseException:
                await self.close()
                raise

    def _start_worker(self, registry: Registry) -> None:
        self.worker = Worker(self.store, registry, self.worker_id, self._worker_options,
                             metrics=self.metrics, scope=self.scope)
        publisher: Publisher
        if self._event_target:
            self._http_publisher = HttpPublisher(self._event_target)
            publisher = self._http_publisher
        else:
            publisher = local_publisher(self.store)
        dispatcher = OutboxDispatcher(self.store, publisher, metrics=self.metrics)
        self._tasks = [asyncio.create_task(self.worker.run(), name="kenning-worker"),
                       asyncio.create_task(dispatcher.run(), name="kenning-outbox")]
        for task in self._tasks:
            task.add_done_callback(self._loop_ended)

    def _loop_ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._failure is not None:
            return
        exc = task.exception()
        if exc is None:
            exc = RuntimeError("it returned")
        failure = exc if isinstance(exc, LoopFailed) else LoopFailed(
            f"app {self.worker_id}: its {task.get_name()} loop died of "
            f"{type(exc).__name__}: {exc}; the process must be restarted")
        if failure is not exc:
            failure.__cause__ = exc
        log.critical("%s", failure, exc_info=exc)
        self._failure = failure
        self._failed.set()

    @property
    def failure(self) -> LoopFailed | None:
        """The error a background loop died of, or ``None`` while all are running."""
        return self._failure

    @property
    def alive(self) -> bool:
        """True while every background loop (worker, outbox) is running."""
        return self._failure is None and all(not task.done() for task in self._tasks)

    async def watch(self) -> None:
        """Wait while the background loops run; raise ``LoopFailed`` when one dies."""
        await self._failed.wait()
        assert self._failure is not None
        raise self._failure

    async def close(self) -> None:
        """Stop the worker (handing held runs back) and close the store."""
        if self._probe is not None:
            await self._probe.cleanup()
            self._probe = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        if self._http_publisher is not None:
            await self._http_publisher.close()
        await self.store.close()

    async def start(
        self,
        workflow: WorkflowDefinition[Any, Any] | str,
        /,
        *args: Any,
        run_id: str | None = None,
        namespace: str | None = None,
        pool: str | None = None,
        upgrade: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Start a run; a workflow definition not yet served by this app is added to it."""
        if (isinstance(workflow, WorkflowDefinition) and self.registry is not None
                and workflow.name not in self.registry):
            self.registry.add(workflow)
        return await super().start(workflow, *args, run_id=run_id, namespace=namespace,
                                   pool=pool, upgrade=upgrade, **kwargs)

    @property
    def probe_address(self) -> tuple[str, int] | None:
        """(host, port) the probe server listens on, when ``probe_port`` was given."""
        if self._probe is None:
            return None
        for address in self._probe.addresses:
            if isinstance(address, tuple) and len(address) >= 2:
                return str(address[0]), int(address[1])
        return None

    async def serve(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        """Serve the CloudEvents sink (and keep the worker running) until cancelled; raises
        ``LoopFailed`` if a background loop dies."""
        from kenning.runtime.sink import create_sink_app, serve_sink

        if self.registry is None:
            raise ConfigurationError("use 'async with App(...) as app' before app.serve()")
        port = port if port is not None else int(os.environ.get("PORT", DEFAULT_PORT))
        web_app = create_sink_app(self.store, default_namespace=self.namespace,
                                  token=self._sink_token)
        runner = await serve_sink(web_app, host, port)
        log.info("kenning sink on http://%s:%d, worker %s", host, port, self.worker_id)
        try:
            await self.watch()
        finally:
            await runner.cleanup()
