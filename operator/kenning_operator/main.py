"""Entry points: ``KenningOperator`` (one operator, for tests and embedding) and ``run``
(what ``kenning operator`` calls)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

import kopf
from aiohttp import web

from kenning.core.errors import KenningError
from kenning.core.store import Store
from kenning.stores import open_store
from kenning_operator import watchhook
from kenning_operator.config import OperatorConfig
from kenning_operator.directory import PoolDirectory, RunDirectory
from kenning_operator.handlers import (
    RUNS,
    RunsWithoutDiffBase,
    build_registry,
    on_raw_event,
    retry_unstarted,
)
from kenning_operator.kube import KubeClient
from kenning_operator.metrics import Metrics
from kenning_operator.outage import LoopSupervisor
from kenning_operator.probes import probe_app, serve_probes
from kenning_operator.scaling import PoolScaler
from kenning_operator.sync import RunSync

log = logging.getLogger(__name__)

KOPF_FINALIZER = "kenning.dev/kopf"
"""kopf's own finalizer name: never added (no handler needs it); runs carry Kenning's
``FINALIZER``, which kopf must not take for its own and remove."""
PEERING_NAME = "kenning"
STOP_GRACE = 0.2
"""Seconds kopf gets to cancel its watchers and handlers before the store closes."""


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
    """kopf settings: no finalizer of kopf's own, state in annotations (status stays the run's),
    Events only for handler failures."""
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = KOPF_FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kenning.dev")
    settings.persistence.diffbase_storage = RunsWithoutDiffBase(
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
        self.sync = RunSync(config, self.store, self.kube, self.runs, self.pools, self.metrics,
                            on_runnable=self.scaler.wake,
                            on_sweep=lambda: retry_unstarted(self))
        self.started: set[str] = set()
        """Run ids this process started or adopted (the store call is made once)."""
        self.starting: dict[str, asyncio.Future[None]] = {}
        """Starts under way, by run id (the watch hook and the handler share them)."""
        self.unstarted: dict[str, Mapping[str, Any]] = {}
        """Bodies of resources whose start failed for a reason of the store (retried)."""
        self.rejected: set[str] = set()
        """Uids of resources that cannot be started (invalid spec, run id taken)."""
        self.ready = threading.Event()
        """Set once kopf has started watching (a ``threading.Event``: tests and probes read
        it from any thread)."""
        self.running = False
        self._store_open = False
        self.tapped = False
        """Whether new runs start straight from kopf's watch stream (``watchhook``)."""
        self.finalizing: set[str] = set()
        """Uids of deleted resources whose run is being cancelled."""
        self.background: set[asyncio.Future[None]] = set()
        """Retries under way (held so that they are not collected)."""
        self._kopf_stop = asyncio.Event()
        self.supervisor = LoopSupervisor(lambda _: self._kopf_stop.set())
        """Stops the operator when one of its loops dies of a bug (``run`` then raises)."""
        self.sync.supervisor = self.supervisor
        self.scaler.supervisor = self.supervisor

    async def run(self, *, stop_flag: asyncio.Event | threading.Event | None = None,
                  priority: int = 0, peering: str | None = None, probe_host: str = "0.0.0.0",
                  probe_port: int | None = None) -> None:
        """Run until ``stop_flag`` is set (or cancelled); then stop every loop.

        kopf cancels every task created in the loop after it started, so embed the operator
        in a loop (or thread) of its own.
        """
        registry = build_registry(self)
        settings = operator_settings(priority=priority, peering=peering)
        self.tapped = watchhook.install(settings, RUNS[0], RUNS[2],
                                        lambda event: on_raw_event(self, event))
        probes: web.AppRunner | None = None
        if self._owns_store:
            await self.store.open()
        self._store_open = self._owns_store
        self.running = True
        # kopf waits up to 5 s at exit for every task created after it started (the store's
        # LISTEN health check makes such tasks): on stop_flag, stop the loops and close the
        # store first, from a task kopf does not wait for, then tell kopf to stop.
        kopf_stop = self._kopf_stop = asyncio.Event()
        relay: asyncio.Task[None] | None = None
        if stop_flag is not None:
            relay = asyncio.create_task(self._relay_stop(stop_flag, kopf_stop),
                                        name="kenning-op-stop")
        try:
            async with self.kube:
                await self.sync.start()
                await self.scaler.start()
                try:
                    if probe_port is not None:
                        probes = await serve_probes(
                            probe_app(self.store, self.metrics, self.ready,
                                      lambda: self.running), probe_host, probe_port)
                    await kopf.operator(
                        registry=registry, settings=settings, memo=kopf.Memo(operator=self),
                        clusterwide=not self.config.namespaces,
                        namespaces=self.config.namespaces, standalone=peering is None,
                        priority=priority, peering_name=peering, stop_flag=kopf_stop,
                        ready_flag=self.ready)
                finally:
                    self.running = False
                    if probes is not None:
                        await probes.cleanup()
                    await self.scaler.stop()
                    await self.sync.stop()
        finally:
            watchhook.uninstall(settings)
            self.running = False
            if relay is not None:
                relay.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await relay
            await self._close_store()
        if self.supervisor.crashed is not None:
            raise OperatorCrashed(
                f"an operator loop died of a bug: {self.supervisor.crashed!r}; the process "
                f"exits so that it is restarted") from self.supervisor.crashed

    async def _relay_stop(self, stop_flag: asyncio.Event | threading.Event,
                          kopf_stop: asyncio.Event) -> None:
        if isinstance(stop_flag, asyncio.Event):
            await stop_flag.wait()
        else:
            # A threading.Event set from another thread: polled (a thread blocked in wait()
            # would hold up the loop's executor shutdown if the flag is never set).
            while not stop_flag.is_set():  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        self.running = False
        await self.scaler.stop()
        await self.sync.stop()
        kopf_stop.set()
        await asyncio.sleep(STOP_GRACE)
        await self._close_store()

    async def _close_store(self) -> None:
        if self._store_open:
            self._store_open = False
            await self.store.close()


def run(database: str, *, namespaces: tuple[str, ...] = (), priority: int = 0,
        peering: str | None = None, probe_host: str = "0.0.0.0", probe_port: int | None = 8080,
        worker_secret: str = "kenning-database", worker_config_map: str | None = None,
        sweep_interval: float = 5.0) -> None:
    """Run the operator until SIGINT/SIGTERM (kopf handles the signals).

    ``peering`` enables kopf peering (HA) under that name, with ``priority``; without it the
    operator runs standalone. Probes and metrics listen on ``probe_port`` (None: off).
    """
    config = OperatorConfig(database=database, namespaces=namespaces,
                            worker_secret=worker_secret, worker_config_map=worker_config_map,
                            sweep_interval=sweep_interval)
    operator = KenningOperator(config)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(operator.run(priority=priority, peering=peering, probe_host=probe_host,
                                 probe_port=probe_port))
