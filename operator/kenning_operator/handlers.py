"""The kopf handlers: ``WorkerPool``s and the login.

kopf watches ``WorkerPool``s only (a handful of objects whose Deployments want kopf's
retries of failed handlers); ``WorkflowRun``s, thousands of them, are watched with the
operator's own client (``informer``, ``intake``) without kopf's per-object machinery.

Handlers are registered on a registry of their own (no module globals), so two operators
can live in one process (the restart tests do that).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import kopf

from kenning_operator.resources import GROUP, VERSION

if TYPE_CHECKING:
    from kenning_operator.main import KenningOperator

RUNS = (GROUP, VERSION, "workflowruns")
POOLS = (GROUP, VERSION, "workerpools")


def pool_seen(op: KenningOperator, kind: str | None, body: kopf.Body | dict[str, Any]) -> None:
    """A ``WorkerPool`` was listed, changed or deleted: update the directory; re-check the
    pending runs of its namespace if what it serves changed."""
    meta = body.get("metadata", {})
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    before = op.pools.get(namespace, name)
    if kind == "DELETED":
        op.pools.remove(namespace, name)
        op.scaler.forget(namespace, name)
        changed = True
    else:
        after = op.pools.update(body)
        # Only what a pool serves decides whether a pending run is schedulable: its own
        # status patches (replicas, activity) re-check nothing.
        changed = before is None or (before.spec, before.error) != (after.spec, after.error)
    if changed:
        op.sync.mark_pending(namespace)
    op.scaler.wake()


def build_registry(op: KenningOperator) -> kopf.OperatorRegistry:
    """A kopf registry with the operator's handlers bound to ``op``."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def _login(**_: Any) -> kopf.ConnectionInfo:
        # Called again by kopf after a 401: fresh credentials, as kopf's own login does.
        op.connection = op.relogin()
        return op.connection

    @kopf.on.event(*POOLS, registry=registry)
    def _pool_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        pool_seen(op, type, body)

    @kopf.on.resume(*POOLS, registry=registry)
    @kopf.on.create(*POOLS, registry=registry)
    @kopf.on.update(*POOLS, field="spec", registry=registry)
    async def _pool_changed(body: kopf.Body, **_: Any) -> None:
        pool = op.pools.update(body)
        if pool.spec is None:
            raise kopf.PermanentError(f"invalid WorkerPool spec: {pool.error}")
        await op.scaler.ensure_deployment(pool)

    return registry
