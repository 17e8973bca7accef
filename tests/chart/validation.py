"""Validate rendered objects: Kubernetes kinds against the Kubernetes schemas
(kubernetes-validate), Kenning's and kopf's kinds against the chart's CRDs, and the Knative
and Prometheus Operator kinds against ``foreign_schemas``."""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from tests.chart.foreign_schemas import SCHEMAS

CRD_DIR = Path(__file__).resolve().parents[2] / "charts" / "kenning" / "crds"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a recent one.
KUBERNETES_VERSIONS = ("1.27.0", "1.33.0")
_NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", "maxLength": 253}


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> a JSON schema made from the CRD's openAPIV3Schema."""
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(CRD_DIR.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = _closed(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
                root = schema.setdefault("properties", {})
                root["apiVersion"] = {"const": f"{spec['group']}/{version['name']}"}
                root["kind"] = {"const": spec["names"]["kind"]}
                root["metadata"] = {"type": "object", "required": ["name"],
                                    "properties": {"name": _NAME}}
                found[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = schema
    return found


def _closed(schema: dict[str, Any]) -> dict[str, Any]:
    """Refuse unknown fields where the API server would silently prune them (typos)."""
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        schema["additionalProperties"] = False
    for child in schema.get("properties", {}).values():
        _closed(child)
    if isinstance(schema.get("items"), dict):
        _closed(schema["items"])
    return schema


def problems(obj: dict[str, Any]) -> list[str]:
    """What is wrong with one object (empty when it is valid)."""
    key = (obj.get("apiVersion", ""), obj.get("kind", ""))
    where = f"{key[1]} {obj.get('metadata', {}).get('name', '?')}"
    schema = crd_schemas().get(key) or SCHEMAS.get(key)
    if schema is not None:
        validator = jsonschema.Draft7Validator(schema)
        return [f"{where}: at {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
                for e in validator.iter_errors(obj)]
    found: list[str] = []
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            return [f"{where}: no schema for {key[0]} {key[1]} (Kubernetes {version}, the "
                    "chart's CRDs or tests/chart/foreign_schemas.py)"]
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(map(str, exc.path)) or "<root>"
            found.append(f"{where}: Kubernetes {version}: at {path}: {exc.message}")
    return found


def assert_valid(objects: list[dict[str, Any]]) -> None:
    """Fail with every problem of every object."""
    assert objects, "nothing was rendered"
    found = [p for obj in objects for p in problems(obj)]
    assert not found, "invalid objects:\n" + "\n".join(found)
