"""JSON schemas of the non-Kubernetes kinds the chart and examples render (Knative Eventing,
Prometheus Operator), written from their v1 CRDs for the fields Kenning uses.

Only what these tests need, but strict: an unknown field in the parts Kenning writes fails.
"""

from __future__ import annotations

from typing import Any

_STR = {"type": "string", "minLength": 1}
_DURATION = {"type": "string", "pattern": r"^P([0-9]+Y)?([0-9]+M)?([0-9]+W)?([0-9]+D)?"
             r"(T([0-9]+H)?([0-9]+M)?([0-9]+(\.[0-9]+)?S)?)?$"}
_KREFERENCE = {"type": "object", "additionalProperties": False, "required": ["kind", "name"],
               "properties": {"apiVersion": _STR, "kind": _STR, "name": _STR,
                              "namespace": _STR, "address": _STR, "group": _STR}}
_DESTINATION = {"type": "object", "additionalProperties": False,
                "anyOf": [{"required": ["uri"]}, {"required": ["ref"]}],
                "properties": {"ref": _KREFERENCE, "uri": _STR, "CACerts": _STR,
                               "audience": _STR}}
_DELIVERY = {"type": "object", "additionalProperties": False,
             "properties": {"deadLetterSink": _DESTINATION,
                            "retry": {"type": "integer", "minimum": 0},
                            "backoffPolicy": {"enum": ["linear", "exponential"]},
                            "backoffDelay": _DURATION, "timeout": _DURATION,
                            "retryAfterMax": _DURATION,
                            "format": {"enum": ["json", "binary"]}}}
_METADATA = {"type": "object", "required": ["name"],
             "properties": {"name": {"type": "string",
                                     "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                                     "maxLength": 63},
                            "namespace": {"type": "string"},
                            "labels": {"type": "object",
                                       "additionalProperties": {"type": "string"}},
                            "annotations": {"type": "object",
                                            "additionalProperties": {"type": "string"}}}}


def _kind(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False,
            "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {"apiVersion": {"const": api_version}, "kind": {"const": kind},
                           "metadata": _METADATA, "spec": spec}}


TRIGGER = _kind("eventing.knative.dev/v1", "Trigger", {
    "type": "object", "additionalProperties": False, "required": ["broker", "subscriber"],
    "properties": {
        "broker": _STR,
        "filter": {"type": "object", "additionalProperties": False, "properties": {
            "attributes": {"type": "object", "additionalProperties": {"type": "string"}}}},
        "filters": {"type": "array", "items": {"type": "object"}},
        "subscriber": _DESTINATION,
        "delivery": _DELIVERY,
    }})

BROKER = _kind("eventing.knative.dev/v1", "Broker", {
    "type": "object", "additionalProperties": False,
    "properties": {"config": _KREFERENCE, "delivery": _DELIVERY}})

SINK_BINDING = _kind("sources.knative.dev/v1", "SinkBinding", {
    "type": "object", "additionalProperties": False, "required": ["subject", "sink"],
    "properties": {
        "subject": {"type": "object", "additionalProperties": False,
                    "required": ["apiVersion", "kind"],
                    "oneOf": [{"required": ["name"]}, {"required": ["selector"]}],
                    "properties": {"apiVersion": _STR, "kind": _STR, "name": _STR,
                                   "namespace": _STR, "selector": {"type": "object"}}},
        "sink": _DESTINATION,
        "ceOverrides": {"type": "object", "additionalProperties": False, "properties": {
            "extensions": {"type": "object", "additionalProperties": {"type": "string"}}}},
    }})

_PROM_DURATION = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?"
                  r"(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
SERVICE_MONITOR = _kind("monitoring.coreos.com/v1", "ServiceMonitor", {
    "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
    "properties": {
        "selector": {"type": "object", "additionalProperties": False, "properties": {
            "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
            "matchExpressions": {"type": "array"}}},
        "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
            "any": {"type": "boolean"},
            "matchNames": {"type": "array", "items": {"type": "string"}}}},
        "jobLabel": {"type": "string"},
        "endpoints": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "properties": {
                "port": _STR, "targetPort": {"type": ["string", "integer"]},
                "path": {"type": "string", "pattern": "^/"},
                "scheme": {"enum": ["http", "https"]},
                "interval": _PROM_DURATION, "scrapeTimeout": _PROM_DURATION,
                "honorLabels": {"type": "boolean"}}}},
    }})

POD_MONITOR = _kind("monitoring.coreos.com/v1", "PodMonitor", {
    "type": "object", "additionalProperties": False,
    "required": ["selector", "podMetricsEndpoints"],
    "properties": {
        "selector": SERVICE_MONITOR["properties"]["spec"]["properties"]["selector"],
        "namespaceSelector": SERVICE_MONITOR["properties"]["spec"]["properties"][
            "namespaceSelector"],
        "jobLabel": {"type": "string"},
        "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {
            "type": "object", "additionalProperties": False, "properties": {
                "port": _STR, "path": {"type": "string", "pattern": "^/"},
                "scheme": {"enum": ["http", "https"]},
                "interval": _PROM_DURATION, "scrapeTimeout": _PROM_DURATION,
                "honorLabels": {"type": "boolean"}}}},
    }})

SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("eventing.knative.dev/v1", "Trigger"): TRIGGER,
    ("eventing.knative.dev/v1", "Broker"): BROKER,
    ("sources.knative.dev/v1", "SinkBinding"): SINK_BINDING,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PodMonitor"): POD_MONITOR,
}
