"""The CRDs: generated from the models, examples valid, CEL rules reject bad resources."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import celpy
import jsonschema
import pytest
import yaml
from celpy import json_to_cel

from kenning_operator import crdgen
from kenning_operator.resources import WorkerPoolSpec, WorkflowRunSpec, parse_duration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples" / "k8s").glob("*.yaml"))


def crd(kind: str) -> dict[str, Any]:
    plural = {"WorkflowRun": "workflowruns", "WorkerPool": "workerpools"}[kind]
    doc: dict[str, Any] = yaml.safe_load((REPO / "crds" / f"{plural}.yaml").read_text())
    return doc


def schema(kind: str) -> dict[str, Any]:
    result: dict[str, Any] = crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return result


def test_crds_match_the_models() -> None:
    for name, text in crdgen.rendered().items():
        path = REPO / "crds" / name
        assert path.exists() and path.read_text() == text, (
            f"{path} is stale: run `python -m kenning_operator.crdgen`")


def test_crd_shape() -> None:
    runs, pools = crd("WorkflowRun")["spec"], crd("WorkerPool")["spec"]
    assert runs["group"] == pools["group"] == "kenning.dev"
    assert runs["names"]["shortNames"] == ["wfr"] and pools["names"]["shortNames"] == ["wp"]
    for spec in (runs, pools):
        assert spec["versions"][0]["name"] == "v1alpha1"
        assert spec["versions"][0]["subresources"] == {"status": {}}
    columns = [c["name"] for c in runs["versions"][0]["additionalPrinterColumns"]
               if not c.get("priority")]
    assert columns == ["Workflow", "Phase", "Waiting For", "Age"]
    columns = [c["name"] for c in pools["versions"][0]["additionalPrinterColumns"]
               if not c.get("priority")]
    assert columns == ["Image", "Desired", "Ready", "Versions", "Age"]


# -- CEL --------------------------------------------------------------------------------
def cel_failures(node_schema: dict[str, Any], new: Any, old: Any = None,
                 path: str = "") -> list[str]:
    """Messages of the x-kubernetes-validations that ``new`` breaks (as the API server
    evaluates them: transition rules only on update, where the old value exists)."""
    failures = []
    env = celpy.Environment()
    for rule in node_schema.get("x-kubernetes-validations", []):
        transition = "oldSelf" in rule["rule"]
        if transition and old is None:
            continue
        activation = {"self": json_to_cel(new)}
        if transition:
            activation["oldSelf"] = json_to_cel(old)
        if not env.program(env.compile(rule["rule"])).evaluate(activation):
            failures.append(rule["message"])
    for name, sub in (node_schema.get("properties") or {}).items():
        if isinstance(new, dict) and name in new:
            old_value = old.get(name) if isinstance(old, dict) else None
            failures += cel_failures(sub, new[name], old_value, f"{path}.{name}")
    return failures


def with_defaults(node_schema: dict[str, Any], value: Any) -> Any:
    """``value`` with the schema's defaults filled in, as the API server does first."""
    if not isinstance(value, dict):
        return value
    out = dict(value)
    for name, sub in (node_schema.get("properties") or {}).items():
        if name not in out and "default" in sub:
            out[name] = sub["default"]
        if name in out:
            out[name] = with_defaults(sub, out[name])
    return out


def validate(doc: dict[str, Any], old: dict[str, Any] | None = None) -> list[str]:
    """Schema errors and CEL messages of a resource."""
    doc = with_defaults(schema(doc["kind"]), doc)
    old = None if old is None else with_defaults(schema(old["kind"]), old)
    errors = [e.message for e in jsonschema.Draft7Validator(schema(doc["kind"]))
              .iter_errors(doc)]
    return errors + cel_failures(schema(doc["kind"]), doc, old)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_valid(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc["apiVersion"] != "kenning.dev/v1alpha1":
            continue
        assert validate(doc) == []
        model = WorkflowRunSpec if doc["kind"] == "WorkflowRun" else WorkerPoolSpec
        model.model_validate(doc["spec"])


def run_doc(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "kenning.dev/v1alpha1", "kind": "WorkflowRun",
            "metadata": {"name": "r"}, "spec": {"workflow": "w", **spec}}


def pool_doc(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "kenning.dev/v1alpha1", "kind": "WorkerPool",
            "metadata": {"name": "p"},
            "spec": {"image": "i", "module": "m", "workflows": ["w"], **spec}}


@pytest.mark.parametrize(("doc", "message"), [
    (run_doc(workflow=""), "spec.workflow must name a workflow (it is empty)"),
    (run_doc(ttlSecondsAfterFinished=-1), "spec.ttlSecondsAfterFinished must be >= 0"),
    (pool_doc(minReplicas=3, maxReplicas=2), "spec.maxReplicas must be >= spec.minReplicas"),
    (pool_doc(workflows=["a", ""]), "spec.workflows must not contain empty names"),
])
def test_cel_rejects_bad_resources_with_a_clear_message(doc: dict[str, Any],
                                                        message: str) -> None:
    assert message in validate(doc)


@pytest.mark.parametrize(("change", "message"), [
    ({"workflow": "other"}, "spec.workflow is immutable"),
    ({"pool": "other"}, "spec.pool is immutable"),
    ({"runId": "other"}, "spec.runId is immutable"),
])
def test_cel_keeps_the_run_identity_immutable(change: dict[str, Any], message: str) -> None:
    old = run_doc(pool="p", runId="r-1")
    new = run_doc(**{"pool": "p", "runId": "r-1", **change})
    failures = validate(new, old)
    assert any(f.startswith(message) for f in failures), failures
    assert validate(run_doc(pool="p", runId="r-1", ttlSecondsAfterFinished=5), old) == []


def test_schema_rejects_what_cel_does_not_cover() -> None:
    assert validate(run_doc(timeout="ten minutes"))
    assert validate(run_doc(runId="-bad-"))
    missing = run_doc()
    del missing["spec"]["workflow"]
    assert any("'workflow' is a required property" in e for e in validate(missing))
    assert validate(pool_doc(workflows=[]))


def test_the_models_check_what_cel_checks() -> None:
    with pytest.raises(ValueError, match=r"maxReplicas must be >= spec\.minReplicas"):
        WorkerPoolSpec.model_validate(pool_doc(minReplicas=3, maxReplicas=2)["spec"])
    with pytest.raises(ValueError, match="must name a workflow"):
        WorkflowRunSpec.model_validate({"workflow": ""})
    assert parse_duration("1h30m") == 5400 and parse_duration("250ms") == 0.25
