"""``kenning operator``: the Kubernetes operator (kopf), from the ``operator`` extra."""

from __future__ import annotations

import click

from kenning.runtime.cli_common import CliFailure, database_option

ENV = "KENNING_OPERATOR_"


@click.command()
@database_option
@click.option("--namespace", "namespaces", multiple=True, envvar=f"{ENV}NAMESPACES",
              show_envvar=True, help="Namespace to serve (repeatable); default: the cluster.")
@click.option("--peering", envvar=f"{ENV}PEERING", default=None, show_envvar=True,
              help="kopf peering name for HA; operators with distinct --priority take turns.")
@click.option("--priority", type=int, envvar=f"{ENV}PRIORITY", default=0, show_default=True,
              show_envvar=True, help="This replica's peering priority (highest is active).")
@click.option("--probe-host", envvar=f"{ENV}PROBE_HOST", default="0.0.0.0", show_default=True,
              show_envvar=True, help="Interface of /healthz, /readyz and /metrics.")
@click.option("--probe-port", type=click.IntRange(0, 65535), envvar=f"{ENV}PROBE_PORT",
              default=8080, show_default=True, show_envvar=True,
              help="Port of /healthz, /readyz and /metrics.")
@click.option("--worker-secret", envvar=f"{ENV}WORKER_SECRET", default="kenning-database",
              show_default=True, show_envvar=True,
              help="Secret (key 'database') giving worker pods their KENNING_DATABASE.")
@click.option("--worker-config-map", envvar=f"{ENV}WORKER_CONFIG_MAP", default=None,
              show_envvar=True, help="ConfigMap added to worker pods' environment.")
@click.option("--sweep-interval", type=float, envvar=f"{ENV}SWEEP_INTERVAL", default=5.0,
              show_default=True, show_envvar=True,
              help="Seconds between catch-up sweeps (store notifications come first).")
def operator(database: str, namespaces: tuple[str, ...], peering: str | None, priority: int,
             probe_host: str, probe_port: int, worker_secret: str,
             worker_config_map: str | None, sweep_interval: float) -> None:
    """Run the Kubernetes operator: WorkflowRun and WorkerPool resources (kopf).

    Needs the 'operator' extra (pip install 'kenning[operator]') and Kubernetes
    credentials (a service account in a pod, or KUBECONFIG).
    """
    try:
        from kenning_operator.main import run
    except ImportError as exc:
        raise CliFailure(
            f"the operator is not installed ({exc}): pip install 'kenning[operator]'", 2
        ) from None
    run(database, namespaces=namespaces, priority=priority, peering=peering,
        probe_host=probe_host, probe_port=probe_port, worker_secret=worker_secret,
        worker_config_map=worker_config_map, sweep_interval=sweep_interval)
