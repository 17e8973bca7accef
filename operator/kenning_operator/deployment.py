"""The Deployment a ``WorkerPool`` owns: its worker pods running ``kenning worker``."""

from __future__ import annotations

from typing import Any

from kenning_operator.config import OperatorConfig
from kenning_operator.resources import API_VERSION, MANAGED_BY, POOL_LABEL, WorkerPoolSpec
from kenning_operator.versions import BUILD_ANNOTATION, bounds_env, build_of

WORKER_PROBE_PORT = 8080
"""The port of a worker pod's ``/healthz``, ``/readyz`` and ``/metrics`` (``--probe-port``)."""


def deployment_name(pool: str) -> str:
    """The name of a pool's Deployment."""
    return f"{pool}-workers"[:253]


def selector_labels(pool: str) -> dict[str, str]:
    """Labels that select a pool's pods."""
    return {"app.kubernetes.io/name": "kenning-worker", POOL_LABEL: pool}


def worker_deployment(*, namespace: str, pool: str, uid: str, spec: WorkerPoolSpec,
                      config: OperatorConfig, replicas: int) -> dict[str, Any]:
    """The Deployment for a pool (owned by it, so deleting the pool deletes the pods)."""
    labels = {**selector_labels(pool), "app.kubernetes.io/instance": pool,
              "app.kubernetes.io/component": "worker",
              "app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/part-of": "kenning"}
    env: list[dict[str, Any]] = [
        {"name": "KENNING_DATABASE", "valueFrom": {"secretKeyRef": {
            "name": config.worker_secret, "key": config.worker_secret_key}}},
        # no KENNING_WORKER_ID: the default <pod name>-<pid>-<random> is unique per process
        *bounds_env(namespace=namespace, pool=pool, spec=spec),
        {"name": "KENNING_PROBE_PORT", "value": str(WORKER_PROBE_PORT)},
        *({"name": k, "value": v} for k, v in sorted(config.extra_worker_env.items())),
        *spec.env,
    ]
    container: dict[str, Any] = {
        "name": "worker",
        "image": spec.image,
        "command": ["kenning", "worker"],
        "args": ["--module", spec.module, "--max-runs", str(spec.runs_per_worker)],
        "env": env,
        **_probes(),
    }
    if config.worker_config_map:
        container["envFrom"] = [{"configMapRef": {"name": config.worker_config_map}}]
    if spec.resources:
        container["resources"] = spec.resources
    if spec.image_pull_policy:
        container["imagePullPolicy"] = spec.image_pull_policy
    pod_spec: dict[str, Any] = {"containers": [container],
                                "terminationGracePeriodSeconds": 60}
    if spec.service_account_name:
        pod_spec["serviceAccountName"] = spec.service_account_name
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(pool), "namespace": namespace, "labels": labels,
            "ownerReferences": [{"apiVersion": API_VERSION, "kind": "WorkerPool", "name": pool,
                                 "uid": uid, "controller": True,
                                 "blockOwnerDeletion": True}],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(pool)},
            "template": {"metadata": {"labels": labels,
                                      "annotations": {**_SCRAPE,
                                                      BUILD_ANNOTATION: build_of(spec)}},
                         "spec": pod_spec},
        },
    }


_SCRAPE = {"prometheus.io/scrape": "true", "prometheus.io/port": str(WORKER_PROBE_PORT),
           "prometheus.io/path": "/metrics"}


def _probes() -> dict[str, Any]:
    """Liveness on the worker's loops, readiness on its store; the metrics port."""
    def get(path: str) -> dict[str, Any]:
        return {"path": path, "port": "probe"}
    return {
        "ports": [{"name": "probe", "containerPort": WORKER_PROBE_PORT}],
        "livenessProbe": {"httpGet": get("/healthz"), "periodSeconds": 10,
                          "timeoutSeconds": 5, "failureThreshold": 3},
        # Not ready while the store is unreachable (the worker rides the outage out).
        "readinessProbe": {"httpGet": get("/readyz"), "periodSeconds": 5,
                           "timeoutSeconds": 6, "failureThreshold": 2},
    }
