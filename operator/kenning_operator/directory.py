"""What the operator knows of its resources, kept current from kopf's watch events.

The sync loop and the scaler look runs and pools up here instead of asking the API server.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from kenning_operator.resources import (
    FINALIZER,
    WorkerPoolSpec,
    WorkflowRunSpec,
    parse_duration,
)
from kenning_operator.status import Schedulable, run_id_for, status_digest

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunRef:
    """One ``WorkflowRun`` as last seen on the watch."""

    namespace: str
    name: str
    uid: str
    run_id: str
    generation: int | None
    workflow: str
    pool: str | None
    phase: str | None
    conditions: tuple[Mapping[str, Any], ...]
    ttl_seconds: int | None
    timeout_seconds: float | None
    created_at: float | None
    deleting: bool
    finalizers: tuple[str, ...] = ()
    status_digest: str | None = None
    """``status_digest`` of the resource's status as listed or watched."""

    @property
    def finalized(self) -> bool:
        """Whether the resource carries Kenning's finalizer (its deletion cancels the run)."""
        return FINALIZER in self.finalizers


def _created(meta: Mapping[str, Any]) -> float | None:
    stamp = meta.get("creationTimestamp")
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def run_ref(body: Mapping[str, Any]) -> RunRef:
    """A ``RunRef`` of a resource body (tolerating a spec the operator cannot use)."""
    meta = body.get("metadata", {})
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    timeout: float | None = None
    if spec.get("timeout"):
        try:
            timeout = parse_duration(str(spec["timeout"]))
        except ValueError:
            timeout = None
    run_id = status.get("runId") or run_id_for(
        name=meta["name"], uid=meta.get("uid", ""), spec=spec, labels=meta.get("labels") or {})
    ttl = spec.get("ttlSecondsAfterFinished")
    return RunRef(
        namespace=meta.get("namespace", "default"), name=meta["name"], uid=meta.get("uid", ""),
        run_id=str(run_id), generation=meta.get("generation"),
        workflow=str(spec.get("workflow", "")), pool=spec.get("pool"),
        phase=status.get("phase"), conditions=tuple(status.get("conditions") or ()),
        ttl_seconds=ttl if isinstance(ttl, int) else None, timeout_seconds=timeout,
        created_at=_created(meta), deleting=bool(meta.get("deletionTimestamp")),
        finalizers=tuple(meta.get("finalizers") or ()),
        status_digest=status_digest(status) if status else None)


class RunDirectory:
    """``WorkflowRun`` resources by run id."""

    def __init__(self) -> None:
        self._by_run: dict[str, RunRef] = {}
        self._run_of_uid: dict[str, str] = {}

    def __len__(self) -> int:
        return len(self._by_run)

    def __iter__(self) -> Iterator[RunRef]:
        return iter(list(self._by_run.values()))

    def get(self, run_id: str) -> RunRef | None:
        """The resource of ``run_id``, if the operator has seen one."""
        return self._by_run.get(run_id)

    def update(self, body: Mapping[str, Any]) -> RunRef:
        """Record the latest state of a resource."""
        ref = run_ref(body)
        self.put(ref)
        return ref

    def put(self, ref: RunRef) -> RunRef | None:
        """Record ``ref``; return what was known of that resource before."""
        old = self._run_of_uid.get(ref.uid)
        previous = self._by_run.get(old) if old is not None else None
        if old is not None and old != ref.run_id:
            self._by_run.pop(old, None)
        self._by_run[ref.run_id] = ref
        self._run_of_uid[ref.uid] = ref.run_id
        return previous

    def remove(self, uid: str) -> RunRef | None:
        """Forget a deleted resource."""
        run_id = self._run_of_uid.pop(uid, None)
        if run_id is None:
            return None
        ref = self._by_run.get(run_id)
        if ref is not None and ref.uid == uid:
            del self._by_run[run_id]
        return ref


@dataclass(frozen=True, slots=True)
class PoolRef:
    """One ``WorkerPool`` as last seen on the watch (``spec`` is None if invalid)."""

    namespace: str
    name: str
    uid: str
    generation: int | None
    spec: WorkerPoolSpec | None
    error: str | None = None


class PoolDirectory:
    """``WorkerPool`` resources and which workflows they serve."""

    def __init__(self) -> None:
        self._pools: dict[tuple[str, str], PoolRef] = {}

    def __iter__(self) -> Iterator[PoolRef]:
        return iter(list(self._pools.values()))

    def get(self, namespace: str, name: str) -> PoolRef | None:
        """The pool ``namespace/name``."""
        return self._pools.get((namespace, name))

    def update(self, body: Mapping[str, Any]) -> PoolRef:
        """Record the latest state of a pool."""
        meta = body.get("metadata", {})
        spec: WorkerPoolSpec | None = None
        error: str | None = None
        try:
            spec = WorkerPoolSpec.model_validate(body.get("spec") or {})
        except ValidationError as exc:
            error = "; ".join(str(e["msg"]) for e in exc.errors())
        ref = PoolRef(namespace=meta.get("namespace", "default"), name=meta["name"],
                      uid=meta.get("uid", ""), generation=meta.get("generation"),
                      spec=spec, error=error)
        self._pools[(ref.namespace, ref.name)] = ref
        return ref

    def remove(self, namespace: str, name: str) -> None:
        """Forget a deleted pool."""
        self._pools.pop((namespace, name), None)

    def pool_for(self, namespace: str, workflow: str, pool: str | None) -> PoolRef | None:
        """The pool that serves ``workflow`` in ``namespace`` (``pool`` if named)."""
        if pool is not None:
            ref = self._pools.get((namespace, pool))
            ok = ref is not None and ref.spec is not None and workflow in ref.spec.workflows
            return ref if ok else None
        for ref in self._pools.values():
            if ref.namespace == namespace and ref.spec and workflow in ref.spec.workflows:
                return ref
        return None

    def schedulable(self, namespace: str, workflow: str, pool: str | None) -> Schedulable:
        """The ``Schedulable`` condition of a run of ``workflow``."""
        found = self.pool_for(namespace, workflow, pool)
        if found is not None:
            return Schedulable(True, "PoolServesWorkflow",
                               f"WorkerPool {found.name} serves workflow '{workflow}'")
        if pool is not None:
            ref = self._pools.get((namespace, pool))
            what = "does not exist" if ref is None else (
                f"is invalid ({ref.error})" if ref.spec is None
                else f"does not list workflow '{workflow}' in spec.workflows")
            return Schedulable(False, "NoPoolServesWorkflow",
                               f"WorkerPool {pool} (spec.pool) {what}; the run stays Pending")
        return Schedulable(False, "NoPoolServesWorkflow",
                           f"no WorkerPool in namespace {namespace} serves workflow "
                           f"'{workflow}'; the run stays Pending until one lists it in "
                           f"spec.workflows")


def spec_of(body: Mapping[str, Any]) -> WorkflowRunSpec:
    """The validated spec of a ``WorkflowRun`` (raises ``ValidationError``)."""
    return WorkflowRunSpec.model_validate(body.get("spec") or {})
