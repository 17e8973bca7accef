"""Kenning's Kubernetes operator: ``WorkflowRun`` and ``WorkerPool`` resources, bridged to the
store by kopf handlers. It uses ``kenning`` (client, stores); ``kenning`` never imports it."""

from kenning_operator.resources import GROUP, VERSION

__all__ = ["GROUP", "VERSION"]
