"""`helm lint --strict` and `helm template` of the default values and of every documented
combination (charts/kenning/ci/*-values.yaml); every object validated."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kenning_operator.config import OperatorConfig
from kenning_operator.deployment import worker_deployment
from kenning_operator.resources import WorkerPoolSpec
from tests.chart.conftest import CHART, NAMESPACE, Render, find, kinds, run_helm
from tests.chart.validation import assert_valid

COMBINATIONS = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))


def combination(name: str) -> dict[str, Any]:
    """The values of a documented combination."""
    values: dict[str, Any] = yaml.safe_load((CHART / "ci" / name).read_text())
    return values


def test_every_combination_is_documented() -> None:
    docs = (CHART.parents[1] / "docs" / "configuration.md").read_text()
    assert COMBINATIONS, "charts/kenning/ci/ holds no *-values.yaml"
    missing = [name for name in COMBINATIONS if f"ci/{name}" not in docs]
    assert not missing, f"docs/configuration.md does not mention {missing}"


def test_lint_strict_default(helm: Path) -> None:
    done = run_helm(helm, "lint", "--strict", str(CHART))
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", COMBINATIONS)
def test_lint_strict_combination(helm: Path, name: str) -> None:
    done = run_helm(helm, "lint", "--strict", str(CHART), "-f", str(CHART / "ci" / name))
    assert done.returncode == 0, done.stdout + done.stderr


def test_default_values_render_a_working_install(render: Render) -> None:
    objects = render()
    assert_valid(objects)
    assert kinds(objects) == {"ServiceAccount", "Secret", "ClusterRole", "ClusterRoleBinding",
                              "Service", "Deployment", "StatefulSet",
                              "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    operator = find(objects, "Deployment", "kenning-operator")
    assert operator["spec"]["strategy"] == {"type": "Recreate"}
    container = operator["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "kenning:0.1.0"
    assert container["args"][0] == "operator"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {p["name"] for p in container["ports"]} == {"http"}
    sink = find(objects, "Deployment", "kenning-sink")
    assert "replicas" not in sink["spec"], "the HPA sizes the sink"
    sink_container = sink["spec"]["template"]["spec"]["containers"][0]
    assert sink_container["args"][:2] == ["sink", "--host=0.0.0.0"]
    assert "--namespace=kenning" in sink_container["args"]
    database = next(e for e in sink_container["env"] if e["name"] == "KENNING_DATABASE")
    assert database["valueFrom"]["secretKeyRef"] == {"name": "kenning-database",
                                                      "key": "database"}
    secret = find(objects, "Secret", "kenning-database")
    assert secret["stringData"]["database"].startswith("postgresql://kenning:")
    assert secret["stringData"]["database"].endswith(
        "@kenning-postgresql.kenning.svc:5432/kenning")
    assert find(objects, "Service", "kenning-sink")["spec"]["ports"][0]["port"] == 80


def test_pods_run_as_non_root_with_a_read_only_root(render: Render) -> None:
    for deployment in (o for o in render() if o["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}


@pytest.mark.parametrize("name", COMBINATIONS)
def test_combination_renders_valid_objects(render: Render, name: str) -> None:
    assert_valid(render(combination(name)))


def test_external_postgresql_uses_the_given_secret(render: Render) -> None:
    objects = render(combination("external-postgresql-values.yaml"))
    assert "StatefulSet" not in kinds(objects) and "Secret" not in kinds(objects)
    operator = find(objects, "Deployment", "kenning-operator")
    container = operator["spec"]["template"]["spec"]["containers"][0]
    assert "--worker-secret=kenning-db" in container["args"]
    env = next(e for e in container["env"] if e["name"] == "KENNING_DATABASE")
    assert env["valueFrom"]["secretKeyRef"] == {"name": "kenning-db", "key": "database"}


def test_triggers_point_at_the_sink_with_the_namespace_path(render: Render) -> None:
    objects = render(combination("knative-values.yaml"))
    payments = find(objects, "Trigger", "kenning-payments")
    assert payments["metadata"]["namespace"] == NAMESPACE
    assert payments["spec"]["broker"] == "default"
    assert payments["spec"]["filter"]["attributes"] == {"type": "payment.completed",
                                                        "source": "payment-service"}
    assert payments["spec"]["subscriber"] == {
        "ref": {"apiVersion": "v1", "kind": "Service", "name": "kenning-sink"},
        "uri": f"/namespaces/{NAMESPACE}"}
    assert payments["spec"]["delivery"]["retry"] == 5
    assert payments["spec"]["delivery"]["deadLetterSink"]["ref"]["name"] == "event-display"
    shipping = find(objects, "Trigger", "kenning-shipping")
    assert shipping["metadata"]["namespace"] == "shop"
    assert shipping["spec"]["subscriber"] == {
        "uri": f"http://kenning-sink.{NAMESPACE}.svc.cluster.local:80/namespaces/shop"}


def test_worker_pools_are_rendered_from_values(render: Render) -> None:
    pool = find(render(combination("worker-pools-values.yaml")), "WorkerPool", "payments")
    assert pool["metadata"]["namespace"] == NAMESPACE
    assert pool["spec"]["module"] == "payments"
    assert pool["spec"]["workflows"] == ["payment_workflow", "payment_reply_workflow"]
    assert (pool["spec"]["minReplicas"], pool["spec"]["maxReplicas"]) == (0, 5)


def test_namespaced_ha_operator(render: Render) -> None:
    objects = render(combination("ha-namespaced-values.yaml"))
    assert "ClusterRole" not in kinds(objects)
    roles = [o for o in objects if o["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["billing", "shop"]
    peerings = [o for o in objects if o["kind"] == "KopfPeering"]
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["billing", "shop"]
    operator = find(objects, "Deployment", "kenning-operator")
    assert operator["spec"]["replicas"] == 2
    container = operator["spec"]["template"]["spec"]["containers"][0]
    assert {"--namespace=shop", "--namespace=billing", "--peering=kenning"} <= \
        set(container["args"])
    assert "exec kenning operator --priority=" in container["command"][2], \
        "peered replicas need distinct priorities"
    assert operator["spec"]["template"]["spec"]["containers"][0]["image"] == \
        "registry.example.com/kenning@sha256:" + "0" * 64
    monitors = [o for o in objects if o["kind"] == "ServiceMonitor"]
    assert sorted(m["metadata"]["name"] for m in monitors) == ["kenning-operator",
                                                               "kenning-sink"]
    for monitor in monitors:
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
        service = next(o for o in objects if o["kind"] == "Service" and
                       o["metadata"]["labels"]["app.kubernetes.io/component"] ==
                       monitor["metadata"]["labels"]["app.kubernetes.io/component"])
        assert service["spec"]["ports"][0]["name"] == monitor["spec"]["endpoints"][0]["port"]
    workers = find(objects, "PodMonitor")
    assert workers["metadata"]["labels"]["release"] == "prometheus"
    pod = worker_deployment(namespace="shop", pool="p", uid="u",
                            spec=WorkerPoolSpec(image="i", module="m", workflows=["w"]),
                            config=OperatorConfig(database="postgresql://x/y"), replicas=1)
    template = pod["spec"]["template"]
    assert workers["spec"]["selector"]["matchLabels"].items() <= \
        template["metadata"]["labels"].items(), "it selects the worker pods the operator makes"
    assert workers["spec"]["podMetricsEndpoints"][0]["port"] == \
        template["spec"]["containers"][0]["ports"][0]["name"]


def test_fixed_size_sink_with_a_token(render: Render) -> None:
    objects = render(combination("fixed-sink-values.yaml"))
    assert "HorizontalPodAutoscaler" not in kinds(objects)
    sink = find(objects, "Deployment", "kenning-sink")
    assert sink["spec"]["replicas"] == 3
    container = sink["spec"]["template"]["spec"]["containers"][0]
    assert "--namespace=shop" in container["args"]
    token = next(e for e in container["env"] if e["name"] == "KENNING_SINK_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "kenning-sink-token", "key": "token"}
    postgresql = find(objects, "StatefulSet")
    assert "volumeClaimTemplates" not in postgresql["spec"]
    assert "change-me" in find(objects, "Secret")["stringData"]["database"]


def test_components_can_be_turned_off(render: Render) -> None:
    objects = render({"operator": {"enabled": False}, "sink": {"enabled": False}})
    assert_valid(objects)
    assert kinds(objects) == {"Secret", "Service", "StatefulSet"}
