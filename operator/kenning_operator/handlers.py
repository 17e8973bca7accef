"""The kopf handlers: they feed the directories and start or cancel runs.

Handlers are registered on a registry of their own (no module globals), so two operators
can live in one process (the restart tests do that).

A ``WorkflowRun`` is started from the watch stream itself (``watchhook``), before kopf's
per-object machinery; its ``on.event`` handler finishes what the hook began (or starts the
run when the hook is not installed) and follows spec changes. Runs have no create, update,
resume or delete handler, so kopf writes nothing on them: the operator adds its own finalizer
with the run's first status patch (``finalizer``), and on deletion cancels the run and
removes it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import kopf
from pydantic import ValidationError

from kenning.core.definitions import encode_input, input_from_json
from kenning.core.errors import RunNotFound
from kenning.core.models import NewRun, RunStatus
from kenning_operator.directory import RunRef, run_ref, spec_of
from kenning_operator.finalizer import remove_finalizer
from kenning_operator.outage import TRANSIENT
from kenning_operator.resources import CR_NAME_LABEL, CR_UID_LABEL, GROUP, VERSION
from kenning_operator.status import run_id_for

if TYPE_CHECKING:
    from kenning_operator.main import KenningOperator

log = logging.getLogger(__name__)

RUNS = (GROUP, VERSION, "workflowruns")
POOLS = (GROUP, VERSION, "workerpools")


async def start_run(op: KenningOperator, body: Mapping[str, Any]) -> None:
    """Create the run of a ``WorkflowRun`` in the store, idempotently on its uid."""
    meta = body.get("metadata", {})
    namespace, name, uid = str(meta.get("namespace")), str(meta.get("name")), str(meta["uid"])
    run_id = run_id_for(name=name, uid=uid, spec=body.get("spec") or {},
                        labels=meta.get("labels") or {})
    if run_id in op.started:
        return
    try:
        spec = spec_of(body)
    except ValidationError as exc:
        reason = "; ".join(str(e["msg"]) for e in exc.errors())
        raise kopf.PermanentError(f"invalid spec: {reason}") from exc
    args, kwargs = input_from_json(spec.input)
    new = NewRun(run_id=run_id, namespace=namespace, workflow=spec.workflow,
                 input=encode_input(args, kwargs), pool=spec.pool,
                 upgrade=spec.upgrade or "pinned",
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
    op.unstarted.pop(run_id, None)
    op.sync.mark(run_id)


def needs_start(op: KenningOperator, ref: RunRef) -> bool:
    """Whether a resource's run is still to be started by this process."""
    return ref.phase is None and not ref.deleting and ref.run_id not in op.started \
        and ref.uid not in op.rejected


def begin_start(op: KenningOperator, ref: RunRef, body: Mapping[str, Any]) -> asyncio.Future[None]:
    """Start the run of ``ref`` in the background (once: a start under way is shared)."""
    task = op.starting.get(ref.run_id)
    if task is None:
        task = asyncio.ensure_future(_start_reporting(op, ref, body))
        op.starting[ref.run_id] = task
        task.add_done_callback(lambda _: op.starting.pop(ref.run_id, None))
    return task


async def _start_reporting(op: KenningOperator, ref: RunRef, body: Mapping[str, Any]) -> None:
    """``start_run``; a bad resource gets a Warning Event, a store failure is retried by the
    sweep."""
    try:
        await start_run(op, body)
    except kopf.PermanentError as exc:
        op.rejected.add(ref.uid)
        op.unstarted.pop(ref.run_id, None)
        log.warning("WorkflowRun %s/%s not started: %s", ref.namespace, ref.name, exc)
        await op.sync.post_event(ref, "Warning", "InvalidSpec", str(exc))
    except Exception as exc:
        op.unstarted[ref.run_id] = body
        op.metrics.api_errors.labels("start").inc()
        log.warning("run of WorkflowRun %s/%s not started (retried by the sweep): %s",
                    ref.namespace, ref.name, exc)


def on_raw_event(op: KenningOperator, event: Mapping[str, Any]) -> None:
    """A ``WorkflowRun`` event straight off the watch stream (before kopf's machinery):
    a resource with no run yet gets it started at once."""
    if event.get("type") not in (None, "ADDED", "MODIFIED"):
        return
    body = event["object"]
    if (body.get("status") or {}).get("phase") \
            or (body.get("metadata") or {}).get("deletionTimestamp"):
        return  # started already, or going: kopf's handler sees it (no work here)
    try:
        ref = run_ref(body)
    except (KeyError, TypeError, ValueError):
        return
    if needs_start(op, ref):
        op.runs.put(ref)
        begin_start(op, ref, body)


def retry_unstarted(op: KenningOperator) -> None:
    """Retry the starts that failed for a reason other than the resource, and the
    deletions not finalized yet (the sweep)."""
    for seen in op.runs:
        if seen.deleting and seen.finalized and seen.uid not in op.finalizing:
            task = asyncio.ensure_future(finalize(op, seen))
            op.background.add(task)
            task.add_done_callback(op.background.discard)
    for run_id, body in list(op.unstarted.items()):
        ref = op.runs.get(run_id)
        if ref is None or not needs_start(op, ref):
            op.unstarted.pop(run_id, None)
        else:
            begin_start(op, ref, body)


async def finalize(op: KenningOperator, ref: RunRef) -> None:
    """A resource being deleted: cancel its run, then remove the finalizer (an outage is
    retried by the sweep)."""
    if ref.uid in op.finalizing:
        return
    op.finalizing.add(ref.uid)
    try:
        await cancel_ref(op, ref)
        await remove_finalizer(op.kube, ref.namespace, ref.name, ref.finalizers)
    except TRANSIENT as exc:
        log.warning("WorkflowRun %s/%s: run not cancelled or finalizer not removed yet "
                    "(retried by the sweep): %s", ref.namespace, ref.name, exc)
    finally:
        op.finalizing.discard(ref.uid)


async def cancel_run(op: KenningOperator, body: Mapping[str, Any]) -> None:
    """Cancel the run of a deleted ``WorkflowRun`` (its finalizer waits for the store)."""
    await cancel_ref(op, run_ref(body))


async def cancel_ref(op: KenningOperator, ref: RunRef) -> None:
    """Cancel the run of the deleted resource ``ref``."""
    try:
        run = await op.store.cancel_run(
            ref.run_id, f"WorkflowRun {ref.namespace}/{ref.name} was deleted")
    except RunNotFound:
        return
    if run.status is RunStatus.CANCELLED and ref.phase not in ("Cancelled",):
        op.metrics.runs_cancelled.labels("deleted").inc()
        log.info("cancelled run %s: WorkflowRun %s/%s deleted", ref.run_id, ref.namespace,
                 ref.name)


class RunsWithoutDiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's last-handled-configuration annotation, for pools only.

    ``WorkflowRun`` has no create, update or resume handler (its ``on.event`` handler sees
    every change), so kopf needs no diff base for it, and storing one would cost a patch of
    every resource. kopf then sees each event of a run as a creation without handlers.
    """

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        if body.get("kind") == "WorkflowRun":
            return None
        return super().fetch(body=body)

    def store(self, *, body: kopf.Body, patch: kopf.Patch,
              essence: kopf.BodyEssence) -> None:
        if body.get("kind") == "WorkflowRun":
            return
        super().store(body=body, patch=patch, essence=essence)


def build_registry(op: KenningOperator) -> kopf.OperatorRegistry:
    """A kopf registry with the operator's handlers bound to ``op``."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def _login(**_: Any) -> kopf.ConnectionInfo:
        # Called again by kopf after a 401: fresh credentials, as kopf's own login does.
        op.connection = op.relogin()
        return op.connection

    @kopf.on.event(*RUNS, registry=registry)
    async def _run_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        if type == "DELETED":
            gone = op.runs.remove(str(body.get("metadata", {}).get("uid")))
            if gone is not None:
                op.sync.resource_gone(gone)
                op.started.discard(gone.run_id)
                op.unstarted.pop(gone.run_id, None)
                op.rejected.discard(gone.uid)
                # Deleted before the finalizer was added: cancel here instead.
                await cancel_run(op, body)
            return
        ref = run_ref(body)
        previous = op.runs.put(ref)
        op.sync.resource_seen(ref)
        if ref.deleting:
            if ref.finalized:
                await finalize(op, ref)
            return
        if needs_start(op, ref):
            # Usually under way already (the watch hook); otherwise started here.
            await asyncio.shield(begin_start(op, ref, body))
        elif previous is not None and previous.generation != ref.generation:
            op.sync.mark(ref.run_id)  # observedGeneration, TTL, timeout

    @kopf.on.event(*POOLS, registry=registry)
    def _pool_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        meta = body.get("metadata", {})
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        before = op.pools.get(namespace, name)
        if type == "DELETED":
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

    @kopf.on.resume(*POOLS, registry=registry)
    @kopf.on.create(*POOLS, registry=registry)
    @kopf.on.update(*POOLS, field="spec", registry=registry)
    async def _pool_changed(body: kopf.Body, **_: Any) -> None:
        pool = op.pools.update(body)
        if pool.spec is None:
            raise kopf.PermanentError(f"invalid WorkerPool spec: {pool.error}")
        await op.scaler.ensure_deployment(pool)

    return registry
