"""Worker pods get liveness and readiness probes on ``kenning worker --probe-port`` and are
scraped like the sink; the port reaches the CLI through the variable it reads."""

from __future__ import annotations

from kenning.runtime import config as cli_config
from kenning_operator.config import OperatorConfig
from kenning_operator.deployment import WORKER_PROBE_PORT, worker_deployment
from kenning_operator.resources import WorkerPoolSpec
from kenning_operator.versions import BUILD_ANNOTATION, build_of


def test_worker_deployment_probes_the_workers_and_is_scraped() -> None:
    spec = WorkerPoolSpec(image="img:1", module="flows", workflows=["a"])
    deployment = worker_deployment(namespace="ns", pool="p", uid="u", spec=spec,
                                   config=OperatorConfig(database="postgresql://x/y"),
                                   replicas=1)
    template = deployment["spec"]["template"]
    container = template["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env[cli_config.ENV_PROBE_PORT] == str(WORKER_PROBE_PORT)
    assert container["ports"] == [{"name": "probe", "containerPort": WORKER_PROBE_PORT}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "probe"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probe"}
    assert template["metadata"]["annotations"] == {
        "prometheus.io/scrape": "true", "prometheus.io/port": str(WORKER_PROBE_PORT),
        "prometheus.io/path": "/metrics", BUILD_ANNOTATION: build_of(spec)}
