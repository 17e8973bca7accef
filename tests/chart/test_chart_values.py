"""Bad values stop `helm template` (so `helm install`) with a message that names them; the
validators of these tests catch what helm lets through."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.conftest import RenderError
from tests.chart.validation import problems

POOL = {"name": "payments", "image": "payments:1", "module": "payments",
        "workflows": ["payment_workflow"]}

BAD_VALUES: list[tuple[str, dict[str, Any], list[str]]] = [
    ("no store", {"postgresql": {"enabled": False}},
     ["no store configured", "database.existingSecret.name", "postgresql.enabled=true"]),
    ("two stores", {"database": {"existingSecret": {"name": "db", "key": "database"}}},
     ["choose one store", "postgresql.enabled=false"]),
    ("worker key", {"postgresql": {"enabled": False},
                    "database": {"existingSecret": {"name": "db", "key": "url"}}},
     ['database.existingSecret.key is "url"', 'key "database"']),
    ("replicas without peering", {"operator": {"replicas": 2}},
     ["operator.replicas is 2", "operator.peering.enabled"]),
    ("sink HPA upside down", {"sink": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}},
     ["sink.autoscaling.minReplicas (5)", "maxReplicas (2)"]),
    ("pool min above max", {"workerPools": [{**POOL, "minReplicas": 4, "maxReplicas": 2}]},
     ['workerPools "payments"', "minReplicas (4)", "maxReplicas (2)"]),
    ("pool twice", {"workerPools": [POOL, POOL]}, ['the name "payments" is used twice']),
    ("trigger twice", {"knative": {"triggers": [{"name": "a"}, {"name": "a"}]}},
     ['knative.triggers: the name "a" is used twice']),
    ("pool without module", {"workerPools": [{"name": "p", "image": "i", "workflows": ["w"]}]},
     ["/workerPools/0", "missing property 'module'"]),
    ("pool name not DNS", {"workerPools": [{**POOL, "name": "Pay_Ments"}]},
     ["/workerPools/0/name", "'Pay_Ments' does not match pattern"]),
    ("pool without workflows", {"workerPools": [{**POOL, "workflows": []}]},
     ["/workerPools/0/workflows", "minItems"]),
    ("unknown key", {"sink": {"replica": 3}},
     ["/sink", "additional properties 'replica' not allowed"]),
    ("wrong type", {"sink": {"port": "http"}}, ["/sink/port", "want integer"]),
    ("zero sink replicas", {"sink": {"replicas": 0}}, ["/sink/replicas", "minimum"]),
    ("bad log level", {"operator": {"logLevel": "loud"}},
     ["/operator/logLevel", "value must be one of"]),
    ("bad backoff", {"knative": {"triggers": [
        {"name": "t", "delivery": {"backoffPolicy": "random"}}]}},
     ["/knative/triggers/0/delivery/backoffPolicy", "value must be one of"]),
    ("bad ISO duration", {"knative": {"triggers": [
        {"name": "t", "delivery": {"backoffDelay": "500ms"}}]}},
     ["/knative/triggers/0/delivery/backoffDelay", "does not match pattern"]),
    ("dead-letter sink without target", {"knative": {"triggers": [
        {"name": "t", "delivery": {"deadLetterSink": {}}}]}},
     ["/knative/triggers/0/delivery/deadLetterSink"]),
    ("bad digest", {"image": {"digest": "latest"}}, ["/image/digest", "does not match"]),
    ("bad namespace", {"operator": {"watchNamespaces": ["Shop"]}},
     ["/operator/watchNamespaces/0", "does not match pattern"]),
]


@pytest.mark.parametrize(("values", "expected"), [(v, e) for _, v, e in BAD_VALUES],
                         ids=[case for case, _, _ in BAD_VALUES])
def test_bad_values_fail_with_their_message(render_error: RenderError, values: dict[str, Any],
                                            expected: list[str]) -> None:
    message = render_error(values)
    missing = [part for part in expected if part not in message]
    assert not missing, f"helm's message lacks {missing}:\n{message}"


def test_validators_catch_what_helm_lets_through() -> None:
    pool = {"apiVersion": "kenning.dev/v1alpha1", "kind": "WorkerPool",
            "metadata": {"name": "p"},
            "spec": {"image": "i", "modul": "m", "workflows": ["w"], "maxReplicas": 0}}
    found = " ".join(problems(pool))
    assert "'module' is a required property" in found
    assert "'modul' was unexpected" in found
    assert "spec/maxReplicas" in found
    trigger = {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
               "metadata": {"name": "t"}, "spec": {"broker": "default", "subscriber": {}}}
    assert problems(trigger), "a Trigger without a subscriber target must be refused"
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
               "spec": {"ports": [{"port": "http"}]}}
    assert any("spec/ports/0/port" in p for p in problems(service))
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    assert "no schema for example.com/v1 Widget" in " ".join(problems(unknown))
