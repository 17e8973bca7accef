"""The kopf handlers: they feed the directories and start or cancel runs.

Handlers are registered on a registry of their own (no module globals), so two operators
can live in one process (the restart tests do that).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

import kopf
from pydantic import ValidationError

from kenning.core.definitions import encode_input, input_from_json
from kenning.core.errors import RunNotFound
from kenning.core.models import NewRun, RunStatus
from kenning_operator.directory import run_ref, spec_of
from kenning_operator.resources import CR_NAME_LABEL, CR_UID_LABEL, GROUP, VERSION
from kenning_operator.status import run_id_for

if TYPE_CHECKING:
    from kenning_operator.main import KenningOperator

log = logging.getLogger(__name__)

RUNS = (GROUP, VERSION, "workflowruns")
POOLS = (GROUP, VERSION, "workerpools")


async def start_run(op: KenningOperator, body: kopf.Body) -> None:
    """Create the run of a ``WorkflowRun`` in the store, idempotently on its uid."""
    meta = body.get("metadata", {})
    if run_id_for(name=str(meta.get("name")), uid=str(meta["uid"]), spec=body.get("spec") or {},
                  labels=meta.get("labels") or {}) in op.started:
        return
    namespace, name, uid = str(meta.get("namespace")), str(meta.get("name")), str(meta["uid"])
    try:
        spec = spec_of(body)
    except ValidationError as exc:
        reason = "; ".join(str(e["msg"]) for e in exc.errors())
        raise kopf.PermanentError(f"invalid spec: {reason}") from exc
    run_id = run_id_for(name=name, uid=uid, spec=body.get("spec") or {},
                        labels=meta.get("labels") or {})
    args, kwargs = input_from_json(spec.input)
    new = NewRun(run_id=run_id, namespace=namespace, workflow=spec.workflow,
                 input=encode_input(args, kwargs), pool=spec.pool,
                 labels={CR_UID_LABEL: uid, CR_NAME_LABEL: name[:63]})
    run, created = await op.store.create_run(new)
    if run.workflow != spec.workflow:
        raise kopf.PermanentError(
            f"run id '{run_id}' already belongs to workflow '{run.workflow}', not "
            f"'{spec.workflow}'; choose another spec.runId")
    if created:
        op.metrics.runs_started.inc()
        op.scaler.wake()
        log.info("started run %s of workflow %s for WorkflowRun %s/%s", run_id, spec.workflow,
                 namespace, name)
    op.started.add(run_id)
    op.runs.update(body)
    op.sync.mark(run_id)


async def cancel_run(op: KenningOperator, body: kopf.Body) -> None:
    """Cancel the run of a deleted ``WorkflowRun`` (the finalizer waits for the store)."""
    ref = run_ref(body)
    try:
        run = await op.store.cancel_run(
            ref.run_id, f"WorkflowRun {ref.namespace}/{ref.name} was deleted")
    except RunNotFound:
        return
    if run.status is RunStatus.CANCELLED and ref.phase not in ("Cancelled",):
        op.metrics.runs_cancelled.labels("deleted").inc()
        log.info("cancelled run %s: WorkflowRun %s/%s deleted", ref.run_id, ref.namespace,
                 ref.name)


def build_registry(op: KenningOperator) -> kopf.OperatorRegistry:
    """A kopf registry with the operator's handlers bound to ``op``."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def _login(**_: Any) -> kopf.ConnectionInfo:
        return op.connection

    @kopf.on.event(*RUNS, registry=registry)
    async def _run_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        if type == "DELETED":
            gone = op.runs.remove(str(body.get("metadata", {}).get("uid")))
            if gone is not None:
                op.sync.resource_gone(gone)
                op.started.discard(gone.run_id)
                # Deleted before kopf's finalizer was added: cancel here instead.
                await cancel_run(op, body)
            return
        ref = op.runs.update(body)
        op.sync.resource_seen(ref)
        if ref.run_id not in op.started and not ref.deleting and ref.phase is None:
            # Start at first sight, one round trip earlier than kopf's create handler
            # (which follows its finalizer patch); that handler then finds it started.
            with contextlib.suppress(kopf.PermanentError):
                await start_run(op, body)

    @kopf.on.resume(*RUNS, registry=registry)
    @kopf.on.create(*RUNS, registry=registry)
    async def _run_created(body: kopf.Body, **_: Any) -> None:
        await start_run(op, body)

    @kopf.on.update(*RUNS, field="spec", registry=registry)
    def _run_updated(body: kopf.Body, **_: Any) -> None:
        op.sync.mark(op.runs.update(body).run_id)  # observedGeneration, TTL, timeout

    @kopf.on.delete(*RUNS, registry=registry)
    async def _run_deleted(body: kopf.Body, **_: Any) -> None:
        await cancel_run(op, body)

    @kopf.on.event(*POOLS, registry=registry)
    def _pool_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        meta = body.get("metadata", {})
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        if type == "DELETED":
            op.pools.remove(namespace, name)
            op.scaler.forget(namespace, name)
        else:
            op.pools.update(body)
        op.sync.mark_pending(namespace)
        op.scaler.wake()

    @kopf.on.resume(*POOLS, registry=registry)
    @kopf.on.create(*POOLS, registry=registry)
    @kopf.on.update(*POOLS, field="spec", registry=registry)
    async def _pool_changed(body: kopf.Body, **_: Any) -> None:
        pool = op.pools.update(body)
        if pool.spec is None:
            raise kopf.PermanentError(f"invalid WorkerPool spec: {pool.error}")
        await op.scaler.ensure_deployment(pool)

    return registry
