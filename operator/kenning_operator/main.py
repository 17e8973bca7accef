"""Entry points: ``KenningOperator`` (one operator, for tests and embedding) and ``run``
(what ``kenning operator`` calls)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading

import kopf
from aiohttp import web

from kenning.core.store import Store
from kenning.stores import open_store
from kenning_operator.config import OperatorConfig
from kenning_operator.directory import PoolDirectory, RunDirectory
from kenning_operator.handlers import build_registry
from kenning_operator.kube import KubeClient
from kenning_operator.metrics import Metrics
from kenning_operator.probes import probe_app, serve_probes
from kenning_operator.scaling import PoolScaler
from kenning_operator.sync import RunSync

log = logging.getLogger(__name__)

FINALIZER = "kenning.dev/cancel-run"
PEERING_NAME = "kenning"


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
    """kopf settings: Kenning's finalizer, state in annotations (status stays the run's),
    Events only for handler failures."""
    settings = kopf.OperatorSettings()
    settings.persistence.finalizer = FINALIZER
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


class KenningOperator:
    """One operator: the store, the API client, the directories, the loops and kopf."""

    def __init__(self, config: OperatorConfig, *, store: Store | None = None,
                 connection: kopf.ConnectionInfo | None = None) -> None:
        self.config = config
        self.store = store or open_store(config.database)
        self._owns_store = store is None
        self.connection = connection or login(config)
        self.metrics = Metrics()
        self.kube = KubeClient(self.connection)
        self.runs = RunDirectory()
        self.pools = PoolDirectory()
        self.scaler = PoolScaler(config, self.store, self.kube, self.pools, self.metrics)
        self.sync = RunSync(config, self.store, self.kube, self.runs, self.pools, self.metrics,
                            on_runnable=self.scaler.wake)
        self.started: set[str] = set()
        """Run ids this process started or adopted (the store call is made once)."""
        self.ready = threading.Event()
        """Set once kopf has started watching (a ``threading.Event``: tests and probes read
        it from any thread)."""
        self.running = False

    async def run(self, *, stop_flag: asyncio.Event | threading.Event | None = None,
                  priority: int = 0, peering: str | None = None, probe_host: str = "0.0.0.0",
                  probe_port: int | None = None) -> None:
        """Run until ``stop_flag`` is set (or cancelled); then stop every loop.

        kopf cancels every task created in the loop after it started, so embed the operator
        in a loop (or thread) of its own.
        """
        registry = build_registry(self)
        settings = operator_settings(priority=priority, peering=peering)
        probes: web.AppRunner | None = None
        if self._owns_store:
            await self.store.open()
        self.running = True
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
                        priority=priority, peering_name=peering, stop_flag=stop_flag,
                        ready_flag=self.ready)
                finally:
                    self.running = False
                    if probes is not None:
                        await probes.cleanup()
                    await self.scaler.stop()
                    await self.sync.stop()
        finally:
            self.running = False
            if self._owns_store:
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
