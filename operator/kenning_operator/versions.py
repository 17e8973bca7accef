"""Pool versions: a ``WorkerPool`` whose image or ``spec.version`` changes keeps serving the
runs that started on the old code with the old code.

A pool's build id is ``spec.version``, else its image reference; its workers get it as
``KENNING_BUILD_ID`` and a run is resumed only by workers of the build it started on
(unless it is marked ``upgrade: auto``). When the build changes, the pool's Deployment moves
to the new build (new runs go there) and, if runs of the old build are unfinished, a copy of
the old Deployment is kept under its own name with ``KENNING_DRAIN`` set: it takes no new
runs. Each old version is sized from zero by its own runnable runs, and deleted once its last
run has finished. ``status.versions`` lists the versions, ``status.versionSummary`` (a
``kubectl get`` column) says how many runs each holds.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import re
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from kenning.core.models import UPGRADE_AUTO, BuildCount
from kenning.core.store import Store
from kenning_operator.directory import PoolDirectory, PoolRef
from kenning_operator.kube import KubeClient, KubeError, resource_path
from kenning_operator.resources import API_VERSION, GROUP, WorkerPoolSpec

log = logging.getLogger(__name__)

BUILD_ANNOTATION = f"{GROUP}/build"
"""Pod-template annotation of a worker Deployment: the build its pods run."""
VERSION_LABEL = f"{GROUP}/version"
"""Label (and selector) of an old version's Deployment and pods."""
TIMER_LEAD = 1.0
"""Seconds before a timer is due that its version counts the run as runnable."""
COUNTS_INTERVAL = 30.0
"""Seconds between the grouped counts of unfinished runs by build while no pool has an old
version: they then only say how many runs the current version holds (``status.versions``).
The count reads every unfinished run (waiting ones included: a sequential scan at 100,000),
so it is not made on every scaler pass."""

Body = dict[str, Any]
PoolKey = tuple[str, str]


def build_of(spec: WorkerPoolSpec) -> str:
    """The build id of a pool's workers: ``spec.version``, else the image reference."""
    return spec.version or spec.image


def bounds_env(*, namespace: str, pool: str, spec: WorkerPoolSpec) -> list[Body]:
    """The environment that bounds a pool's workers to its namespace, pool, build and
    workflows (``kenning worker`` reads it)."""
    return [{"name": "KENNING_NAMESPACE", "value": namespace},
            {"name": "KENNING_POOL", "value": pool},
            {"name": "KENNING_BUILD_ID", "value": build_of(spec)},
            {"name": "KENNING_WORKFLOWS", "value": ",".join(spec.workflows)}]


def version_slug(build: str) -> str:
    """A DNS-label-safe, stable short form of a build id: ``v1-3fa2c1``."""
    readable = re.sub(r"[^a-z0-9]+", "-", build.lower().rsplit("/", 1)[-1]).strip("-")[:20]
    digest = hashlib.sha256(build.encode()).hexdigest()[:6]
    return f"{readable.strip('-')}-{digest}" if readable else digest


def version_deployment_name(pool: str, build: str) -> str:
    """The name of the Deployment that keeps an old version of ``pool``."""
    return f"{pool}-workers-{version_slug(build)}"[:253]


def template_build(deployment: Body) -> str | None:
    """The build a worker Deployment's pods run (annotation, else their env)."""
    template = deployment.get("spec", {}).get("template", {})
    found = (template.get("metadata", {}).get("annotations") or {}).get(BUILD_ANNOTATION)
    if found:
        return str(found)
    for container in template.get("spec", {}).get("containers", []):
        for var in container.get("env") or []:
            if var.get("name") == "KENNING_BUILD_ID" and var.get("value"):
                return str(var["value"])
    return None


def old_version_deployment(current: Body, pool: str, build: str, replicas: int) -> Body:
    """A copy of ``current`` (running ``build``) that keeps serving that build's runs:
    its own name and selector, ``KENNING_DRAIN`` set so it takes no new runs."""
    meta = current.get("metadata", {})
    spec = copy.deepcopy(current.get("spec", {}))
    slug = version_slug(build)
    labels = {**(meta.get("labels") or {}), VERSION_LABEL: slug}
    template = spec.setdefault("template", {})
    tmeta = template.setdefault("metadata", {})
    tmeta["labels"] = {**(tmeta.get("labels") or {}), VERSION_LABEL: slug}
    tmeta["annotations"] = {**(tmeta.get("annotations") or {}), BUILD_ANNOTATION: build}
    for container in template.get("spec", {}).get("containers", []):
        env = [v for v in container.get("env") or []
               if v.get("name") not in ("KENNING_DRAIN", "KENNING_BUILD_ID")]
        container["env"] = [*env, {"name": "KENNING_BUILD_ID", "value": build},
                            {"name": "KENNING_DRAIN", "value": "true"}]
    selector = spec.get("selector", {}).get("matchLabels") or {}
    spec["selector"] = {"matchLabels": {**selector, VERSION_LABEL: slug}}
    spec["replicas"] = replicas
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": version_deployment_name(pool, build),
                         "namespace": meta.get("namespace"), "labels": labels,
                         "ownerReferences": meta.get("ownerReferences") or []},
            "spec": spec}


@dataclass
class _Held:
    unfinished: int = 0
    runnable: int = 0


@dataclass
class _PoolVersions:
    old: set[str] = field(default_factory=set)
    loaded: bool = False
    status: Body | None = None


class PoolVersions:
    """Keeps, sizes and retires the Deployments of pools' old versions."""

    def __init__(self, store: Store, kube: KubeClient, pools: PoolDirectory) -> None:
        self.store = store
        self.kube = kube
        self.pools = pools
        self._state: dict[PoolKey, _PoolVersions] = {}
        self._held: dict[PoolKey, dict[str | None, _Held]] = {}
        self._counted_at: float | None = None
        self.counts = 0
        """Grouped counts read so far."""

    def due(self) -> bool:
        """Whether the scaler's pass needs fresh counts: some pool has an old version (its
        Deployment is sized by them), or the last count is ``COUNTS_INTERVAL`` old."""
        if self._counted_at is None or any(state.old for state in self._state.values()):
            return True
        return time.monotonic() - self._counted_at >= COUNTS_INTERVAL

    def forget(self, namespace: str, name: str) -> None:
        """A pool was deleted (its Deployments go with it: they are owned by it)."""
        self._state.pop((namespace, name), None)

    async def refresh(self) -> None:
        """Count the unfinished runs of every pool by build (one grouped query)."""
        counts = await self.store.count_unfinished_by_build(due_before=time.time() + TIMER_LEAD)
        self._counted_at = time.monotonic()
        self.counts += 1
        held: dict[PoolKey, dict[str | None, _Held]] = defaultdict(dict)
        for count in counts:
            pool = self.pools.pool_for(count.namespace, count.workflow, count.pool)
            if pool is None or pool.spec is None:
                continue
            build = _version_of(count, build_of(pool.spec))
            entry = held[(pool.namespace, pool.name)].setdefault(build, _Held())
            entry.unfinished += count.unfinished
            entry.runnable += count.runnable
        self._held = dict(held)

    def held_by_old_versions(self, pool: PoolRef) -> int:
        """Runnable runs of ``pool`` that only its old versions may take."""
        if pool.spec is None:
            return 0
        current = build_of(pool.spec)
        return sum(h.runnable for build, h in self._held.get((pool.namespace, pool.name),
                                                             {}).items()
                   if build is not None and build != current)

    async def retire(self, pool: PoolRef, existing: Body) -> None:
        """Before the pool's Deployment moves to a new build: keep the old one's pods for
        the runs that started on it (called with the Deployment as it still is)."""
        if pool.spec is None:
            return
        old, new = template_build(existing), build_of(pool.spec)
        if old is None or old == new:
            return
        await self._load(pool)
        await self.refresh()
        held = self._held.get((pool.namespace, pool.name), {}).get(old)
        if held is None or held.unfinished == 0:
            return
        body = old_version_deployment(existing, pool.name, old,
                                      _replicas(held.runnable, pool.spec))
        path = resource_path("apps/v1", "deployments", pool.namespace)
        try:
            await self.kube.create(path, body)
        except KubeError as exc:
            if exc.status != 409:  # kept already (an earlier attempt)
                raise
        self._state.setdefault((pool.namespace, pool.name), _PoolVersions()).old.add(old)
        log.info("WorkerPool %s/%s moves to build %s; Deployment %s keeps build %s for its "
                 "%d unfinished run(s)", pool.namespace, pool.name, new,
                 body["metadata"]["name"], old, held.unfinished)

    async def reconcile(self, pool: PoolRef, current_deployment: str,
                        current_replicas: int | None) -> None:
        """Size or delete the old versions' Deployments; report all versions in status."""
        if pool.spec is None:
            return
        key = (pool.namespace, pool.name)
        state = await self._load(pool)
        current = build_of(pool.spec)
        held = self._held.get(key, {})
        state.old |= {b for b, h in held.items() if b is not None and b != current
                      and h.unfinished}
        versions: list[Body] = []
        for build in sorted(state.old):
            if build == current:
                state.old.discard(build)
                continue
            replicas = await self._size_old(pool, pool.spec, build, held.get(build, _Held()))
            if replicas is None:
                state.old.discard(build)
                continue
            h = held.get(build, _Held())
            versions.append({"build": build, "deployment": version_deployment_name(
                pool.name, build), "current": False, "runs": h.unfinished,
                "runnableRuns": h.runnable, "replicas": replicas})
        mine = [h for b, h in held.items() if b is None or b == current]
        versions.insert(0, {"build": current, "deployment": current_deployment,
                            "current": True, "runs": sum(h.unfinished for h in mine),
                            "runnableRuns": sum(h.runnable for h in mine),
                            "replicas": current_replicas})
        summary = ", ".join(f"{v['build']} ({v['runs']} runs)" for v in versions)
        status = {"versions": versions, "versionSummary": summary}
        if status != state.status:
            patched = await self.kube.merge_patch(
                resource_path(API_VERSION, "workerpools", pool.namespace, pool.name, "status"),
                {"status": status})
            if patched is not None:
                state.status = status

    async def _size_old(self, pool: PoolRef, spec: WorkerPoolSpec, build: str,
                        held: _Held) -> int | None:
        """Size an old version's Deployment; delete it once it holds no run. ``None``
        when the version is gone."""
        path = resource_path("apps/v1", "deployments", pool.namespace,
                             version_deployment_name(pool.name, build))
        if held.unfinished == 0:
            if await self.kube.delete(path):
                log.info("WorkerPool %s/%s: the last run of build %s finished; its "
                         "Deployment is deleted", pool.namespace, pool.name, build)
            return None
        deployment = await self.kube.get(path)
        if deployment is None:
            return None  # no code of that build to run it: nothing to size
        want = _replicas(held.runnable, spec)
        if int(deployment.get("spec", {}).get("replicas") or 0) != want:
            await self.kube.merge_patch(path, {"spec": {"replicas": want}})
            log.info("WorkerPool %s/%s build %s: %d runnable runs, %d workers",
                     pool.namespace, pool.name, build, held.runnable, want)
        return want

    async def _load(self, pool: PoolRef) -> _PoolVersions:
        """The pool's known old versions; after a restart, read back from its status."""
        state = self._state.setdefault((pool.namespace, pool.name), _PoolVersions())
        if not state.loaded:
            body = await self.kube.get(resource_path(API_VERSION, "workerpools",
                                                     pool.namespace, pool.name))
            for version in ((body or {}).get("status") or {}).get("versions") or []:
                if not version.get("current") and version.get("build"):
                    state.old.add(str(version["build"]))
            state.loaded = True
        return state


def _version_of(count: BuildCount, current: str) -> str | None:
    """The version a group of runs belongs to: its build if pinned to one, else the
    newest (runs not started yet, or free to upgrade)."""
    if count.build_id is None or count.upgrade == UPGRADE_AUTO:
        return current
    return count.build_id


def _replicas(runnable: int, spec: WorkerPoolSpec) -> int:
    """Workers of an old version: from zero, one per ``runsPerWorker`` runnable runs."""
    return min(spec.max_replicas, math.ceil(runnable / spec.runs_per_worker))
