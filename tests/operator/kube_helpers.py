"""Reading and writing the emulator's objects as kubectl would."""

from __future__ import annotations

from typing import Any

import kmock

from tests.operator.emulator import POOLS, RUNS, Emulator

DEPLOYMENTS = "apps/v1/deployments"
EVENTS = "v1/events"


def collection(resource: str, namespace: str) -> str:
    """The collection URL path of ``resource`` in ``namespace``."""
    group_version, plural = resource.rsplit("/", 1)
    root = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    return f"{root}/namespaces/{namespace}/{plural}"


async def apply(api: Emulator, resource: str, body: dict[str, Any]) -> dict[str, Any]:
    """Create an object (``kubectl create``)."""
    namespace = body["metadata"].setdefault("namespace", "default")
    async with api.post(collection(resource, namespace), json=body) as resp:
        data: dict[str, Any] = await resp.json()
        assert resp.status < 300, data
        return data


async def delete(api: Emulator, resource: str, namespace: str, name: str) -> None:
    """Delete an object (``kubectl delete --wait=false``)."""
    async with api.delete(f"{collection(resource, namespace)}/{name}") as resp:
        assert resp.status < 300, await resp.text()


async def patch(api: Emulator, resource: str, namespace: str, name: str,
                body: dict[str, Any], subresource: str = "") -> None:
    """Merge-patch an object."""
    path = f"{collection(resource, namespace)}/{name}" + (f"/{subresource}" if subresource
                                                           else "")
    async with api.patch(path, json=body,
                         headers={"Content-Type": "application/merge-patch+json"}) as resp:
        assert resp.status < 300, await resp.text()


def get(api: Emulator, resource: str, namespace: str, name: str) -> dict[str, Any] | None:
    """The stored object, or ``None``."""
    key = (kmock.resource(resource), namespace, name)
    if key not in api.objects or api.objects[key].deleted:
        return None
    raw: dict[str, Any] = api.objects[key].raw
    return raw


def status(api: Emulator, name: str, namespace: str = "default") -> dict[str, Any]:
    """A WorkflowRun's status (empty if none or gone)."""
    obj = get(api, RUNS, namespace, name) or {}
    result: dict[str, Any] = obj.get("status") or {}
    return result


def condition(api: Emulator, name: str, kind: str) -> dict[str, Any] | None:
    """One condition of a WorkflowRun."""
    for cond in status(api, name).get("conditions") or []:
        if cond["type"] == kind:
            return dict(cond)
    return None


def events_of(api: Emulator, name: str, namespace: str = "default") -> list[dict[str, Any]]:
    """Kubernetes Events about the object ``name``, oldest first."""
    return [obj.raw for (res, ns, _), obj in api.objects.items()
            if res.plural == "events" and ns == namespace and not obj.deleted
            and obj.raw.get("involvedObject", {}).get("name") == name]


def run_body(name: str, workflow: str, input: Any = None, **spec: Any) -> dict[str, Any]:
    """A WorkflowRun manifest."""
    return {"apiVersion": "kenning.dev/v1alpha1", "kind": "WorkflowRun",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"workflow": workflow, "input": input, **spec}}


def pool_body(name: str, workflows: list[str], **spec: Any) -> dict[str, Any]:
    """A WorkerPool manifest."""
    return {"apiVersion": "kenning.dev/v1alpha1", "kind": "WorkerPool",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"image": "example/flows:1", "module": "tests.operator.flows",
                     "workflows": workflows, **spec}}


__all__ = ["DEPLOYMENTS", "POOLS", "RUNS", "apply", "condition", "delete", "events_of", "get",
           "patch", "pool_body", "run_body", "status"]
