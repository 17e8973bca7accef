"""The embedded ``App``: store, worker, outbox and (on ``serve``) the sink, in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from kenning.core.definitions import Registry, WorkflowDefinition
from kenning.core.errors import ConfigurationError
from kenning.runtime.client import Client
from kenning.runtime.outbox import HttpPublisher, OutboxDispatcher, Publisher, local_publisher
from kenning.runtime.worker import Worker, WorkerOptions
from kenning.stores import open_store

log = logging.getLogger(__name__)

DEFAULT_PORT = 8001


class App(Client):
    """Kenning in one process: ``async with App(...) as app`` opens the store and starts the
    worker; ``await app.serve(port=8001)`` adds the CloudEvents sink and runs until cancelled.

    Args:
        database: a SQLite file path (default ``kenning.db``) or a ``postgresql://`` URL.
        worker_id: this process's identity for leases; unique per process.
        namespace: the default namespace of started runs and of events posted to ``/``.
        workflows: the workflows served; default every ``@workflow`` imported so far.
        worker: run the worker in this process (``False`` for a client or sink only).
        event_target: where ``send_event`` publishes: a URL, default ``$K_SINK``, else this
            app's own router.
        sink_token: when set, the sink requires ``Authorization: Bearer <token>``.
    """

    def __init__(
        self,
        database: str = "kenning.db",
        worker_id: str | None = None,
        *,
        namespace: str = "default",
        workflows: Iterable[WorkflowDefinition[Any, Any]] | None = None,
        worker: bool = True,
        event_target: str | None = None,
        sink_token: str | None = None,
        worker_options: WorkerOptions | None = None,
        event_retention: float = 86_400.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(open_store(database, clock=clock, event_retention=event_retention),
                         namespace=namespace)
        self.database = database
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self._workflows = None if workflows is None else list(workflows)
        self._run_worker = worker
        self._event_target = event_target if event_target is not None else os.environ.get("K_SINK")
        self._sink_token = sink_token
        self._worker_options = worker_options
        self._tasks: list[asyncio.Task[None]] = []
        self._http_publisher: HttpPublisher | None = None
        self.registry: Registry | None = None
        self.worker: Worker | None = None

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
        if not self._run_worker:
            return
        self.worker = Worker(self.store, self.registry, self.worker_id, self._worker_options)
        publisher: Publisher
        if self._event_target:
            self._http_publisher = HttpPublisher(self._event_target)
            publisher = self._http_publisher
        else:
            publisher = local_publisher(self.store)
        dispatcher = OutboxDispatcher(self.store, publisher)
        self._tasks = [asyncio.create_task(self.worker.run(), name="kenning-worker"),
                       asyncio.create_task(dispatcher.run(), name="kenning-outbox")]

    async def close(self) -> None:
        """Stop the worker (handing held runs back) and close the store."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
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
        **kwargs: Any,
    ) -> str:
        """Start a run; a workflow definition not yet served by this app is added to it."""
        if (isinstance(workflow, WorkflowDefinition) and self.registry is not None
                and workflow.name not in self.registry):
            self.registry.add(workflow)
        return await super().start(workflow, *args, run_id=run_id, namespace=namespace, **kwargs)

    async def serve(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        """Serve the CloudEvents sink (and keep the worker running) until cancelled."""
        from kenning.runtime.sink import create_sink_app, serve_sink

        if self.registry is None:
            raise ConfigurationError("use 'async with App(...) as app' before app.serve()")
        port = port if port is not None else int(os.environ.get("PORT", DEFAULT_PORT))
        web_app = create_sink_app(self.store, default_namespace=self.namespace,
                                  token=self._sink_token)
        runner = await serve_sink(web_app, host, port)
        log.info("kenning sink on http://%s:%d, worker %s", host, port, self.worker_id)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()
