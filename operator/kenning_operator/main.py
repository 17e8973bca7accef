"""Entry points: ``KenningOperator`` (one operator, for tests and embedding) and ``run``
(what ``kenning operator`` calls).

Stopping is bounded: on SIGTERM (or ``stop_flag``) the operator stops its own loops, tells
kopf to stop and closes the store, each step within a few seconds whether or not the API
server and the database still answer; ``run`` exits within ``EXIT_DEADLINE`` seconds even if
something refuses to stop (then with a failure code, after saying what hung)."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import kopf
from aiohttp import web

from kenning.core.errors import KenningError
from kenning.core.store import Store
from kenning.stores import open_store
from kenning_operator import watchhook
from kenning_operator.config import OperatorConfig
from kenning_operator.directory import PoolDirectory, RunDirectory
from kenning_operator.handlers import build_registry, pool_seen
from kenning_operator.informer import Informer
from kenning_operator.intake import RunIntake
from kenning_operator.kube import KubeClient, resource_path
from kenning_operator.metrics import Metrics
from kenning_operator.outage import TRANSIENT, LoopSupervisor, Outage
from kenning_operator.probes import probe_app, serve_probes
from kenning_operator.resources import API_VERSION
from kenning_operator.scaling import PoolScaler
from kenning_operator.sync import RunSync
from kenning_operator.watchhook import PeeringGate

log = logging.getLogger(__name__)

KOPF_FINALIZER = "kenning.dev/kopf"
"""kopf's own finalizer name: never added (no pool handler needs one)."""
PEERING_NAME = "kenning"
STEP_TIMEOUT = 3.0
"""Seconds each step of stopping may take (the operator's loops, kopf, the store) before it
is abandoned; kopf is cancelled after that long."""
EXIT_DEADLINE = 15.0
"""Seconds ``run`` waits, after a stop was asked, for the operator to finish; then the
process exits anyway."""


def login(config: OperatorConfig) -> kopf.ConnectionInfo:
    """Credentials: the configured API server, the pod's service account, or kubeconfig."""
    if config.api_server:
        return kopf.ConnectionInfo(server=config.api_server, default_namespace="default")
    settings = kopf.OperatorSettings()
    info = (kopf.login_with_service_account(settings=settings)
            or kopf.login_with_kubeconfig(settings=settings))
    if info is None:
        raise kopf.LoginError("no Kubernetes credentials: not in a pod with a service "
                              "account, and no kubeconfig (set KUBECONFIG)")
    return info


def operator_settings(*, priority: int = 0, peering: str | None = None) -> kopf.OperatorSettings:
    """kopf settings (for ``WorkerPool``s): no finalizer of kopf's own, state in annotations
    (status stays the pool's), Events only for handler failures."""
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = KOPF_FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kenning.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kenning.dev", key="last-handled-configuration")
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "kenning-operator"
    settings.scanning.disabled = True
    settings.peering.priority = priority
    settings.peering.name = peering or PEERING_NAME
    settings.peering.standalone = peering is None
    settings.watching.server_timeout = 300
    return settings


class OperatorCrashed(KenningError):
    """One of the operator's loops died of a bug: the operator stopped (and its process
    exits non-zero, so that Kubernetes restarts it)."""


class KenningOperator:
    """One operator: the store, the API client, the directories, the loops and kopf."""

    def __init__(self, config: OperatorConfig, *, store: Store | None = None,
                 connection: kopf.ConnectionInfo | None = None,
                 relogin: Callable[[], kopf.ConnectionInfo] | None = None) -> None:
        self.config = config
        self.store = store or open_store(config.database)
        self._owns_store = store is None
        self.relogin = relogin or ((lambda: connection) if connection is not None
                                   else (lambda: login(config)))
        """Fresh credentials (re-read from the token file or kubeconfig): for kopf's login
        and for the operator's own client after a 401."""
        self.connection = connection or self.relogin()
        self.metrics = Metrics()
        self.kube = KubeClient(self.connection, relogin=self.relogin)
        self.runs = RunDirectory()
        self.pools = PoolDirectory()
        self.scaler = PoolScaler(config, self.store, self.kube, self.pools, self.metrics)
        self.intake: RunIntake
        self.sync = RunSync(config, self.store, self.kube, self.runs, self.pools, self.metrics,
                            on_runnable=self.scaler.wake,
                            on_sweep=lambda: self.intake.retry())
        self.intake = RunIntake(self.store, self.kube, self.runs, self.sync, self.metrics,
                                on_started=self.scaler.wake)
        self.gate = PeeringGate(enabled=False)
        self.informers: list[Informer] = []
        self.ready = threading.Event()
        """Set once the operator watches everything (a ``threading.Event``: tests and probes
        read it from any thread)."""
        self.running = False
        self._store_open = False
        self.tapped = False
        """Whether kopf's peering state can be read (``watchhook``)."""
        self._kopf_stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.supervisor = LoopSupervisor(lambda _: self._kopf_stop.set())
        """Stops the operator when one of its loops dies of a bug (``run`` then raises)."""
        self.sync.supervisor = self.supervisor
        self.scaler.supervisor = self.supervisor
        self.intake.supervisor = self.supervisor

    def _collections(self, plural: str) -> list[tuple[str | None, str]]:
        """(namespace, path) of each collection of ``plural`` the operator serves."""
        if not self.config.namespaces:
            return [(None, resource_path(API_VERSION, plural, None))]
        return [(ns, resource_path(API_VERSION, plural, ns)) for ns in self.config.namespaces]

    async def run(self, *, stop_flag: asyncio.Event | threading.Event | None = None,
                  priority: int = 0, peering: str | None = None, probe_host: str = "0.0.0.0",
                  probe_port: int | None = None) -> None:
        """Run until ``stop_flag`` is set (or cancelled); then stop every loop.

        kopf cancels every task created in the loop after it started, so embed the operator
        in a loop (or thread) of its own.
        """
        registry = build_registry(self)
        settings = operator_settings(priority=priority, peering=peering)
        self.gate = PeeringGate(enabled=False)
        self.tapped = watchhook.install(settings, self.gate)
        self.gate.enabled = peering is not None and self.tapped
        self.informers = [
            Informer(self.kube, path, what=f"WorkflowRuns in {ns}" if ns else "WorkflowRuns",
                     on_event=self.intake.on_event,
                     on_listed=functools.partial(self._relisted, namespace=ns),
                     gate=self.gate if self.gate.enabled else None)
            for ns, path in self._collections("workflowruns")]
        probes: web.AppRunner | None = None
        if self._owns_store:
            await self.store.open()
        self._store_open = self._owns_store
        self.running = True
        kopf_stop = self._kopf_stop = asyncio.Event()
        kopf_ready = threading.Event()
        stopping: asyncio.Task[None] | None = None
        try:
            async with self.kube:
                # Every long-lived task exists before kopf starts: kopf waits at its exit for
                # (and then cancels) the tasks created after it started.
                await self.sync.start()
                await self.scaler.start()
                await self.intake.start()
                self._tasks = [self.supervisor.watch(asyncio.create_task(
                    informer.run(), name=f"kenning-op-informer-{i}"))
                    for i, informer in enumerate(self.informers)]
                self._tasks.append(self.supervisor.watch(asyncio.create_task(
                    self._sync_when_listed(kopf_ready), name="kenning-op-ready")))
                if stop_flag is not None:
                    self._tasks.append(asyncio.create_task(
                        self._wait_flag(stop_flag, kopf_stop), name="kenning-op-stop"))
                try:
                    if probe_port is not None:
                        probes = await serve_probes(
                            probe_app(self.store, self.metrics, self.ready,
                                      lambda: self.running), probe_host, probe_port)
                    operator = asyncio.ensure_future(kopf.operator(
                        registry=registry, settings=settings, memo=kopf.Memo(operator=self),
                        clusterwide=not self.config.namespaces,
                        namespaces=self.config.namespaces, standalone=peering is None,
                        priority=priority, peering_name=peering, stop_flag=kopf_stop,
                        ready_flag=kopf_ready))
                    await asyncio.wait((operator, asyncio.ensure_future(kopf_stop.wait())),
                                       return_when=asyncio.FIRST_COMPLETED)
                    kopf_stop.set()
                    # Our loops stop while kopf stops its own; neither waits for the other.
                    stopping = asyncio.ensure_future(self._stop_loops())
                    await _bounded(operator, "kopf", cancel_after=STEP_TIMEOUT)
                    await _bounded(stopping, "the operator's loops")
                finally:
                    self.running = False
                    self.ready.clear()
                    if stopping is None:
                        await _bounded(asyncio.ensure_future(self._stop_loops()),
                                       "the operator's loops")
                    if probes is not None:
                        await _bounded(asyncio.ensure_future(probes.cleanup()), "the probes")
        finally:
            watchhook.uninstall(settings)
            self.running = False
            await self._close_store()
        if self.supervisor.crashed is not None:
            raise OperatorCrashed(
                f"an operator loop died of a bug: {self.supervisor.crashed!r}; the process "
                f"exits so that it is restarted") from self.supervisor.crashed

    def _relisted(self, uids: set[str], *, namespace: str | None) -> None:
        self.intake.on_listed(uids, namespace)
        self.sync.relisted()

    async def _sync_when_listed(self, kopf_ready: threading.Event) -> None:
        """Once every collection is listed (runs by the informers, pools here, so that no
        pending run looks unschedulable for want of its pool), let the sync loop and the
        sweep start; ready once kopf is ready too."""
        outage = Outage("first listing of WorkerPools")
        for _ns, path in self._collections("workerpools"):
            while True:
                try:
                    items, _version = await self.kube.list_all(path)
                except TRANSIENT as exc:
                    await asyncio.sleep(outage.failed(exc))
                    continue
                outage.succeeded()
                for body in items:
                    if self.pools.get(str(body["metadata"].get("namespace")),
                                      str(body["metadata"].get("name"))) is None:
                        pool_seen(self, "ADDED", body)
                break
        synced = asyncio.gather(*(i.synced.wait() for i in self.informers))
        while not (synced.done() or self.gate.paused()):  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if synced.done():
            self.sync.synced.set()
        while not kopf_ready.is_set():  # noqa: ASYNC110  (kopf sets a threading.Event)
            await asyncio.sleep(0.01)
        self.ready.set()  # watching, or standing by for another operator (peering)
        await synced
        self.sync.synced.set()

    @staticmethod
    async def _wait_flag(stop_flag: asyncio.Event | threading.Event,
                         kopf_stop: asyncio.Event) -> None:
        if isinstance(stop_flag, asyncio.Event):
            await stop_flag.wait()
        else:
            # A threading.Event set from another thread: polled (a thread blocked in wait()
            # would hold up the loop's executor shutdown if the flag is never set).
            while not stop_flag.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        kopf_stop.set()

    async def _stop_loops(self) -> None:
        """Stop the informers, the intake, the scaler and the sync, then close the store
        (each bounded). This runs while kopf stops: kopf waits, at its exit, for every task
        created after it started (the store's LISTEN health check makes such tasks), so the
        store closes now, not after kopf."""
        self.running = False
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for what, step in (("starting runs", self.intake.stop),
                           ("the pool scaler", self.scaler.stop),
                           ("the status sync", self.sync.stop)):
            await _bounded(asyncio.ensure_future(step()), what)
        await self._close_store()

    async def _close_store(self) -> None:
        if self._store_open:
            self._store_open = False
            await _bounded(asyncio.ensure_future(self.store.close()), "closing the store",
                           timeout=2 * STEP_TIMEOUT)


async def _bounded(task: asyncio.Future[Any], what: str, *, timeout: float = STEP_TIMEOUT,
                   cancel_after: float | None = None) -> None:
    """Wait for ``task`` at most ``timeout`` seconds (with ``cancel_after``: that long, then
    cancel it and wait ``timeout`` more); log what did not finish. Its errors propagate
    (but not its cancellation)."""
    waited = cancel_after if cancel_after is not None else timeout
    done, _ = await asyncio.wait((task,), timeout=waited)
    if not done and cancel_after is not None:
        log.warning("%s did not stop within %.0fs; cancelling it", what, waited)
        task.cancel()
        done, _ = await asyncio.wait((task,), timeout=timeout)
    if not done:
        log.error("%s did not stop in time; going on without it", what)
        return
    if not task.cancelled():
        task.result()


def run(database: str, *, namespaces: tuple[str, ...] = (), priority: int = 0,
        peering: str | None = None, probe_host: str = "0.0.0.0", probe_port: int | None = 8080,
        worker_secret: str = "kenning-database", worker_config_map: str | None = None,
        sweep_interval: float = 5.0) -> None:
    """Run the operator until SIGINT/SIGTERM; exit within ``EXIT_DEADLINE`` seconds of it.

    ``peering`` enables kopf peering (HA) under that name, with ``priority``; without it the
    operator runs standalone. Probes and metrics listen on ``probe_port`` (None: off).

    The operator runs in a thread of its own; this (main) thread takes the signals, asks it
    to stop and waits for it, within a deadline.
    """
    config = OperatorConfig(database=database, namespaces=namespaces,
                            worker_secret=worker_secret, worker_config_map=worker_config_map,
                            sweep_interval=sweep_interval)
    operator = KenningOperator(config)
    stop_flag = threading.Event()
    errors: list[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(operator.run(stop_flag=stop_flag, priority=priority, peering=peering,
                                     probe_host=probe_host, probe_port=probe_port))
        except BaseException as exc:
            errors.append(exc)

    logging.getLogger("kopf._core.reactor.running").addFilter(_NotInMainThread())
    thread = threading.Thread(target=main, name="kenning-operator", daemon=True)
    stop_requested = _handle_signals(stop_flag)
    thread.start()
    try:
        while thread.is_alive() and not stop_flag.is_set():
            thread.join(0.2)
    except KeyboardInterrupt:
        stop_flag.set()
    stop_flag.set()
    thread.join(EXIT_DEADLINE)
    if thread.is_alive():
        log.critical("the operator did not stop within %.0fs of %s; exiting anyway",
                     EXIT_DEADLINE, stop_requested() or "its stop")
        logging.shutdown()
        os._exit(1)
    if errors and not isinstance(errors[0], KeyboardInterrupt):
        raise errors[0]


def _handle_signals(stop_flag: threading.Event) -> Callable[[], str | None]:
    """SIGTERM and SIGINT set ``stop_flag`` (when this is the main thread); returns what
    asked for the stop."""
    received: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, _frame: object) -> None:
        received.append(signal.Signals(signum).name)
        log.info("%s received: stopping", received[-1])
        stop_flag.set()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, handler)
    return lambda: received[0] if received else None


class _NotInMainThread(logging.Filter):
    """kopf warns that it ignores OS signals in a thread: the operator takes them itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "OS signals are ignored" not in record.getMessage()


__all__ = ["EXIT_DEADLINE", "KenningOperator", "OperatorCrashed", "run"]
