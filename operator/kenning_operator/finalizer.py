"""Kenning's own finalizer on ``WorkflowRun``s (kopf's is not used for them).

kopf adds its finalizer with a JSON patch guarded by a ``resourceVersion`` test; the
operator's first status patch, sent straight from the watch stream, changes that version
first, so kopf's patch failed with 422 and was retried. The operator therefore adds the
finalizer itself, alongside the run's first status patch, with a JSON patch that tests only
the finalizer list (which nothing else of the operator's writes): no race, no 422 in the
normal path, and no more writes than before. On deletion it cancels the run, then removes
the finalizer the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from kenning_operator.kube import Invalid, KubeClient, resource_path
from kenning_operator.resources import API_VERSION, FINALIZER

log = logging.getLogger(__name__)

ATTEMPTS = 3


def _path(namespace: str, name: str) -> str:
    return resource_path(API_VERSION, "workflowruns", namespace, name)


def add_ops(finalizers: Sequence[str] | None) -> list[dict[str, Any]]:
    """The JSON patch that adds Kenning's finalizer to a list last seen as ``finalizers``."""
    if not finalizers:
        return [{"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}]
    return [{"op": "test", "path": "/metadata/finalizers", "value": list(finalizers)},
            {"op": "add", "path": "/metadata/finalizers/-", "value": FINALIZER}]


def remove_ops(finalizers: Sequence[str]) -> list[dict[str, Any]]:
    """The JSON patch that removes Kenning's finalizer from ``finalizers`` (tested first)."""
    index = list(finalizers).index(FINALIZER)
    return [{"op": "test", "path": f"/metadata/finalizers/{index}", "value": FINALIZER},
            {"op": "remove", "path": f"/metadata/finalizers/{index}"}]


async def _finalizers(kube: KubeClient, namespace: str, name: str) -> list[str] | None:
    body = await kube.get(_path(namespace, name))
    if body is None or body.get("metadata", {}).get("deletionTimestamp"):
        return None
    return list(body.get("metadata", {}).get("finalizers") or ())


async def add_finalizer(kube: KubeClient, namespace: str, name: str,
                        seen: Sequence[str] | None) -> bool:
    """Add the finalizer (``seen``: the list as last watched); False if the resource is
    gone or being deleted."""
    finalizers: list[str] | None = list(seen or ())
    for _ in range(ATTEMPTS):
        if finalizers is None:
            return False
        if FINALIZER in finalizers:
            return True
        try:
            return await kube.json_patch(_path(namespace, name), add_ops(finalizers),
                                         answer=False) is not None
        except Invalid:  # the list changed under us: read it again
            finalizers = await _finalizers(kube, namespace, name)
    return False


async def remove_finalizer(kube: KubeClient, namespace: str, name: str,
                           seen: Sequence[str]) -> None:
    """Remove the finalizer from a resource being deleted (``seen``: its finalizers as
    last watched)."""
    finalizers = list(seen)
    for _ in range(ATTEMPTS):
        if FINALIZER not in finalizers:
            return
        try:
            await kube.json_patch(_path(namespace, name), remove_ops(finalizers))
            return
        except Invalid:
            fresh = await kube.get(_path(namespace, name))
            if fresh is None:
                return
            finalizers = list(fresh.get("metadata", {}).get("finalizers") or ())
    log.warning("finalizer of WorkflowRun %s/%s not removed after %d attempts (retried on "
                "its next event)", namespace, name, ATTEMPTS)
