"""kmock's Kubernetes emulator with the gaps kopf 1.45 needs filled.

kmock 0.8 sets no ``uid``, ``resourceVersion``, ``creationTimestamp`` or ``generation``,
answers a failed JSON-patch ``test`` with 500 (kopf expects 422 for its finalizer patches),
marks objects for deletion without a new ``resourceVersion``, and lets a patch of the
``status`` subresource change anything. This subclass fills those gaps in front of kmock's
own handling; selectors stay ignored (the operator uses none).

kmock also decides which reaction serves a request by replaying every request it ever
recorded through each reaction's filter chain: each request costs time proportional to all
before it (5 ms after a hundred requests, seconds after thousands). ``_FastDispatch`` asks
the filters about the new request alone, so a request costs the same at any point of a test
or benchmark. For the same reason ``_KubernetesEmulator__get_obj`` looks one object up by its
key instead of scanning them all.

Where the operator's targets depend on it, it behaves like a real API server: every write
gets a new ``resourceVersion``; a merge patch carrying a stale ``metadata.resourceVersion``,
a delete whose ``preconditions.uid`` does not match, or a create of a name that exists get
409; a failed JSON-patch ``test`` gets 422. Settable per test: ``latency`` (seconds added to
each request), ``rate_limit`` (requests a second, beyond which it answers 429 with
``Retry-After``, as API Priority and Fairness does) and ``tokens`` (bearer tokens it accepts;
others get 401). ``answered`` counts the answers by status, ``writes`` the writes by object.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock import KubernetesError
from kmock._internal import apps, dsl, enums, filtering, rendering
from kmock._internal.k8s import KubernetesObjectConflictError, KubernetesObjectNotFoundError

_FAST = (enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE, enums.action.FETCH,
         enums.action.LIST)

RUNS = "kenning.dev/v1alpha1/workflowruns"
POOLS = "kenning.dev/v1alpha1/workerpools"


def _quick(criteria: Any, request: rendering.Request) -> bool:
    """``criteria(request)``, decided at once for the emulator's own fallbacks: kmock compares
    enums by compiling regular expressions when they differ."""
    if isinstance(criteria, filtering.K8sCriteria) and criteria.action is not ... and all(
            getattr(criteria, f) is ... for f in _K8S_OTHER):
        return bool(request.action == criteria.action)
    if isinstance(criteria, filtering.HTTPCriteria) and isinstance(criteria.method, enum.Enum) \
            and isinstance(request.method, enum.Enum) and criteria.method != request.method:
        return False
    return bool(criteria(request))


_K8S_OTHER = ("method", "resource", "namespace", "name", "subresource")


def _admits(view: dsl.View, request: rendering.Request) -> bool | None:
    """Whether ``request`` passes the filter chain ``view`` (None: not a plain chain)."""
    while True:
        if isinstance(view, dsl.Root):
            return True
        if isinstance(view, dsl.Filter):
            if not _quick(view.criteria, request):
                return False
        elif not isinstance(view, (dsl.Priority, dsl.Reaction)) or \
                type(view) not in (dsl.Filter, dsl.Priority, dsl.Reaction):
            return None  # slices, exclusions, groups: let kmock replay the requests
        view = view._source


class _FastDispatch(apps.RawHandler):
    """kmock's reaction lookup, deciding each reaction's filter on the new request only."""

    __slots__ = ()

    async def _handle(self, request: rendering.Request) -> Any:
        for payload in self._ordered():
            admitted = _admits(payload._source, request)
            if admitted is None:
                admitted = request in payload._source
            if admitted and not payload._disabled.is_set():
                try:
                    return await payload(request)
                except rendering.ReactionMismatchError:
                    payload._disabled.set()
                except NotImplementedError:
                    pass
        raise NotImplementedError("no kmock reaction matches the request")

    def _ordered(self) -> list[Any]:
        """kmock's order: by priority, padded with zeros to equal length, highest first
        (kept until a reaction is added)."""
        cache = getattr(self, "_order_cache", None)
        if cache is not None and cache[0] == len(self._payloads):
            return list(cache[1])
        keys = [tuple(-x for x in p.priorities) for p in self._payloads]
        width = max((len(k) for k in keys), default=0)
        order = sorted(range(len(keys)), key=lambda i: keys[i] + (0,) * (width - len(keys[i])))
        payloads = [self._payloads[i] for i in order]
        self._order_cache = (len(self._payloads), payloads)
        return list(payloads)


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator, _FastDispatch):
    """A Kubernetes API emulator good enough for kopf and the Kenning operator."""

    _counter_value: int = attrs.field(default=0, init=False)
    latency: float = attrs.field(default=0.0, init=False)
    """Seconds each request waits before it is served."""
    rate_limit: float | None = attrs.field(default=None, init=False)
    """Requests a second served (a token bucket as deep as one second); beyond: 429."""
    retry_after: int = attrs.field(default=1, init=False)
    """The ``Retry-After`` seconds of a 429."""
    tokens: set[str] | None = attrs.field(default=None, init=False)
    """Bearer tokens accepted (None: no authentication)."""
    answered: Counter[int] = attrs.field(factory=Counter, init=False)
    """Answers by HTTP status (429 and 401 included)."""
    refused_by: Counter[tuple[int, str]] = attrs.field(factory=Counter, init=False)
    """401 and 429 answers by (status, client): the User-Agent's product name."""
    writes: Counter[tuple[str, str, str]] = attrs.field(factory=Counter, init=False)
    """Writes served, by (plural, name, what): what is ``create``, ``patch``,
    ``patch/status``, ``delete``."""
    peak_in_flight: int = attrs.field(default=0, init=False)
    """Most writes being served at once."""
    peak_per_object: int = attrs.field(default=0, init=False)
    """Most writes to one object's status being served at once (1: never two at a time)."""
    _bucket: list[float] = attrs.field(factory=lambda: [0.0, 0.0], init=False)
    _order_cache: Any = attrs.field(default=None, init=False)
    _own_payloads: int = attrs.field(default=0, init=False)
    _dependents: dict[str, set[Any]] = attrs.field(factory=dict, init=False)
    """Objects by the uid of an owner in their ``ownerReferences`` (for the collector)."""
    _collecting: set[Any] = attrs.field(factory=set, init=False)
    _in_flight: Counter[tuple[str, str]] = attrs.field(factory=Counter, init=False)

    def declare_kenning(self) -> None:
        """Declare what kopf and the operator use."""
        for plural, kind, short in (("workflowruns", "WorkflowRun", "wfr"),
                                    ("workerpools", "WorkerPool", "wp")):
            self.resources[f"kenning.dev/v1alpha1/{plural}"] = kmock.ResourceInfo(
                kind=kind, singular=plural[:-1], namespaced=True, shortnames={short},
                verbs={"list", "watch", "get", "patch", "create", "delete", "update"},
                subresources={"status"})
        for key, kind, namespaced in (
                ("v1/namespaces", "Namespace", False), ("v1/events", "Event", True),
                ("apps/v1/deployments", "Deployment", True),
                ("apiextensions.k8s.io/v1/customresourcedefinitions",
                 "CustomResourceDefinition", False)):
            self.resources[key] = kmock.ResourceInfo(
                kind=kind, namespaced=namespaced,
                verbs={"list", "watch", "get", "patch", "create", "delete"})

    async def _serve_list(self, request: rendering.Request) -> Any:
        # kmock answers resourceVersion '...'; give the real one so the watch can resume there.
        listing = await super()._serve_list(request)
        listing["metadata"]["resourceVersion"] = str(self._last_version)
        return listing

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[Any]:
        # kmock replays every object at the start of a watch; a real API server sends only
        # what changed after the listed resourceVersion (kopf would see stale copies).
        since = request.params.get("resourceVersion", "")
        floor = int(since) if since.isdigit() else 0
        async for event in super()._serve_watch(request):
            if isinstance(event, dict) and event.get("type") == "ADDED" and floor and \
                    int(event["object"]["metadata"].get("resourceVersion", 0)) <= floor:
                continue
            yield event

    def _KubernetesEmulator__get_obj(self, request: rendering.Request,
                                     strict: bool) -> Any:
        # kmock scans every object to serve one (fetch, create, update, delete all pass
        # strict=True with a name): look it up by its key instead.
        if strict and request.name is not None and request.resource is not None:
            return self._objects._objects.get(
                (request.resource, request.namespace, request.name))
        objs = self._KubernetesEmulator__get_objs(request, strict=strict)
        return objs[0] if objs else None

    @property
    def _last_version(self) -> int:
        return self._counter_value

    def _next_version(self) -> str:
        self._counter_value += 1
        return str(self._counter_value)

    def _stored(self, key: Any) -> Any:
        """kmock's stored object of (resource, namespace, name), looked up by its key."""
        return self._objects._objects.get(key)

    def _current(self, request: rendering.Request) -> dict[str, Any] | None:
        """The object a request names as it is now (not a copy: read it, do not change it)."""
        obj = self._stored((request.resource, request.namespace, request.name))
        if obj is None or obj.deleted:
            return None
        raw: dict[str, Any] = obj.raw
        return raw

    async def go_away(self) -> None:
        """Stop answering at once, as an API server that died: stop listening and cut every
        open connection (watch streams included)."""
        for server in self.servers:
            test_server = server._managed_server
            runner = getattr(test_server, "runner", None)
            if runner is None:
                continue
            for site in list(runner.sites):
                await site.stop()
            if runner.server is not None:
                for handler in list(runner.server.connections):
                    handler.force_close()
                    if handler.transport is not None:
                        handler.transport.abort()

    def writes_of(self, plural: str, name: str) -> Counter[str]:
        """Writes served to one object, by what (``create``, ``patch``, ``patch/status``)."""
        return Counter({sub: n for (p, obj, sub), n in self.writes.items()
                        if p == plural and obj == name})

    def _refusal(self, request: rendering.Request) -> aiohttp.web.StreamResponse | None:
        if self.tokens is not None:
            auth = request.headers.get("Authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
                return _status_response(401, "Unauthorized", "Unauthorized")
        if self.rate_limit is not None and request.action != enums.action.WATCH:
            now = time.monotonic()
            tokens, at = self._bucket
            tokens = min(self.rate_limit, tokens + (now - at) * self.rate_limit)
            if tokens < 1.0:
                self._bucket[:] = [tokens, now]
                return _status_response(429, "TooManyRequests",
                                        "Too many requests, please try again later.",
                                        {"Retry-After": str(self.retry_after)})
            self._bucket[:] = [tokens - 1.0, now]
        return None

    async def _handle(self, request: rendering.Request) -> Any:
        if request.resource is None or request.action != enums.action.UPDATE:
            return await self._handle_counted(request)
        key = (str(request.resource.plural), f"{request.name}/{request.subresource or ''}")
        self._in_flight[key] += 1
        self.peak_per_object = max(self.peak_per_object, self._in_flight[key])
        self.peak_in_flight = max(self.peak_in_flight, self._in_flight.total())
        try:
            return await self._handle_counted(request)
        finally:
            self._in_flight[key] -= 1
            if not self._in_flight[key]:
                del self._in_flight[key]

    async def _handle_counted(self, request: rendering.Request) -> Any:
        if request.resource is not None:
            if self.latency:
                await asyncio.sleep(self.latency)
            refused = self._refusal(request)
            if refused is not None:
                self.answered[refused.status] += 1
                agent = request.headers.get("User-Agent", "").split("/")[0]
                self.refused_by[(refused.status, agent)] += 1
                return refused
            async with self._lock:
                conflict = self._precondition_failed(request)
                if conflict is not None:
                    self.answered[409] += 1
                    return _status_response(409, "Conflict", conflict)
                try:
                    await self._fill_gaps(request)
                except KubernetesError as exc:
                    self.answered[exc.status] += 1
                    return _status_response(exc.status, exc.reason or "", exc.message or "")
        if request.action in _FAST and request.resource is not None \
                and request.resource.plural and request.resource.version \
                and len(self._payloads) == self._own_payloads:
            response = await self._serve_fast(request)
        else:
            response = await super()._handle(request)
        status = int(getattr(response, "status", 200))
        self.answered[status] += 1
        if request.resource is not None and status < 300 and request.action in (
                enums.action.CREATE, enums.action.UPDATE, enums.action.DELETE):
            name = request.name or ((request.data or {}).get("metadata") or {}).get("name", "")
            verb = {enums.action.CREATE: "create", enums.action.UPDATE: "patch",
                    enums.action.DELETE: "delete"}[request.action]
            sub = f"/{request.subresource}" if request.subresource else ""
            self.writes[(str(request.resource.plural), str(name), verb + sub)] += 1
        return response

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self._own_payloads = len(self._payloads)

    async def _serve_fast(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """What kmock's emulator answers to a create, patch, delete, get or list, without
        its reaction machinery (which a test adding reactions of its own still gets):
        kmock's request parsing, lookup of the reaction and rendering of the answer cost
        several times the change itself."""
        try:
            if request.action == enums.action.LIST:
                return aiohttp.web.json_response(await self._serve_list(request))
            async with self._lock:
                return await self._change(request)
        except KubernetesError as exc:
            return _status_response(exc.status, exc.reason or "", exc.message or "")

    async def _change(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        """kmock's ``KubernetesEmulator._handle`` and ``_serve_*`` for one object, under
        the lock: the change, its watch event, the object as the answer."""
        assert request.resource is not None
        resource, action = request.resource, request.action
        bus = self._buses[resource]
        if action == enums.action.CREATE:
            data: dict[str, Any] = request.data
            meta = data.get("metadata", {})
            key = (resource, request.namespace or meta.get("namespace"), meta.get("name"))
            obj = self._stored(key)
            if obj is None:
                self._objects[key] = data
                obj = self._stored(key)
            elif not obj.deleted:
                raise KubernetesObjectConflictError()
            else:
                obj.create(data)
            raw = obj.last.raw
            for owner in meta.get("ownerReferences") or ():
                self._dependents.setdefault(str(owner.get("uid")), set()).add(key)
            await bus.put({"type": "ADDED", "object": raw})
            return aiohttp.web.json_response(raw)
        key = (resource, request.namespace, request.name)
        obj = self._stored(key)
        if obj is None or obj.deleted:
            raise KubernetesObjectNotFoundError()
        if action == enums.action.FETCH:
            return aiohttp.web.json_response(obj.raw)
        if action == enums.action.DELETE:
            meta = obj.get("metadata", {})
            if meta.get("deletionTimestamp"):
                return aiohttp.web.json_response(obj.raw)  # marked already
            if meta.get("finalizers"):  # marked in _fill_gaps
                return aiohttp.web.json_response(obj.raw)
            raw = obj.last.raw
            await self._gone(resource, obj, raw)
            return aiohttp.web.json_response(raw)
        obj.patch(request.data)
        raw = obj.raw
        await bus.put({"type": "MODIFIED", "object": raw})
        meta = raw.get("metadata", {})
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            await self._gone(resource, obj, raw)  # its last finalizer removed
        return aiohttp.web.json_response(raw)

    async def _gone(self, resource: Any, obj: Any, raw: dict[str, Any]) -> None:
        """Delete an object for good (under the lock); its dependents go after it, as
        Kubernetes' garbage collector deletes them (background propagation)."""
        obj.delete()
        await self._buses[resource].put({"type": "DELETED", "object": raw})
        uid = str(raw.get("metadata", {}).get("uid"))
        if uid in self._dependents:
            task = asyncio.ensure_future(self._collect(uid))
            self._collecting.add(task)
            task.add_done_callback(self._collecting.discard)

    async def _collect(self, owner_uid: str) -> None:
        """The garbage collector: delete what ``owner_uid`` owned (marked for deletion
        when it has finalizers)."""
        async with self._lock:
            for key in sorted(self._dependents.pop(owner_uid, set()), key=str):
                obj = self._stored(key)
                if obj is None or obj.deleted:
                    continue
                meta = obj.get("metadata", {})
                if owner_uid not in {str(o.get("uid")) for o in meta.get("ownerReferences")
                                     or ()} or meta.get("deletionTimestamp"):
                    continue
                if meta.get("finalizers"):
                    obj.patch({"metadata": {"deletionTimestamp": _now(),
                                            "resourceVersion": self._next_version()}})
                    await self._buses[key[0]].put({"type": "MODIFIED", "object": obj.raw})
                else:
                    await self._gone(key[0], obj, obj.last.raw)

    def _precondition_failed(self, request: rendering.Request) -> str | None:
        """Why a real API server would answer 409 (None: it would not)."""
        if request.action == enums.action.CREATE and isinstance(request.data, dict):
            name = (request.data.get("metadata") or {}).get("name")
            key = (request.resource, request.namespace, name)
            if name and key in self.objects and not self.objects[key].deleted:
                return f"{request.resource.plural if request.resource else ''} {name!r} " \
                       f"already exists"
            return None
        if request.name is None:
            return None
        current = self._current(request)
        if current is None:
            return None
        meta = current.get("metadata", {})
        data = request.data
        if request.action == enums.action.UPDATE and isinstance(data, dict):
            wanted = (data.get("metadata") or {}).get("resourceVersion")
            if wanted is not None and str(wanted) != str(meta.get("resourceVersion")):
                return "the object has been modified; please apply your changes to the " \
                       "latest version and try again"
        if request.action == enums.action.DELETE and isinstance(data, dict):
            uid = (data.get("preconditions") or {}).get("uid")
            if uid is not None and uid != meta.get("uid"):
                return f"Precondition failed: UID in precondition: {uid}, UID in object " \
                       f"meta: {meta.get('uid')}"
        return None

    async def _fill_gaps(self, request: rendering.Request) -> None:
        if request.action == enums.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            meta.setdefault("namespace", request.namespace)
            meta["uid"] = str(uuid.uuid4())
            meta["resourceVersion"] = self._next_version()
            meta["generation"] = 1
            meta["creationTimestamp"] = _now()
        elif request.action == enums.action.UPDATE and request.name is not None:
            current = self._current(request)
            if current is None:
                return
            version = self._next_version()
            if isinstance(request.data, list):
                self._json_patch(request, current, version)
            elif isinstance(request.data, dict):
                self._merge_patch(request, current, version)
        elif request.action == enums.action.DELETE and request.name is not None:
            current = self._current(request)
            meta = (current or {}).get("metadata", {})
            if current is not None and meta.get("finalizers") \
                    and not meta.get("deletionTimestamp"):
                key = (request.resource, request.namespace, request.name)
                self.objects[key].patch({"metadata": {"deletionTimestamp": _now(),
                                                      "resourceVersion": self._next_version()}})
                await self._buses[request.resource].put(
                    {"type": "MODIFIED", "object": self.objects[key].raw})

    def _json_patch(self, request: rendering.Request, current: dict[str, Any],
                    version: str) -> None:
        ops: list[dict[str, Any]] = request.data
        try:
            patched = jsonpatch.apply_patch(current, ops)
        except (jsonpatch.JsonPatchTestFailed, jsonpatch.JsonPatchConflict) as exc:
            raise KubernetesError(status=422, reason="Invalid",
                                  message=f"the JSON patch does not apply: {exc}") from exc
        if request.subresource == "status":
            ops[:] = [op for op in ops if str(op.get("path", "")).startswith("/status")]
        if patched.get("spec") != current.get("spec"):
            ops.append({"op": "add", "path": "/metadata/generation",
                        "value": int(current["metadata"].get("generation", 1)) + 1})
        ops.append({"op": "add", "path": "/metadata/resourceVersion", "value": version})

    def _merge_patch(self, request: rendering.Request, current: dict[str, Any],
                     version: str) -> None:
        data: dict[str, Any] = request.data
        if request.subresource == "status":
            for key in list(data):
                if key != "status":
                    del data[key]
        elif "spec" in data and data["spec"] != current.get("spec"):
            data.setdefault("metadata", {})["generation"] = \
                int(current["metadata"].get("generation", 1)) + 1
        data.setdefault("metadata", {})["resourceVersion"] = version


def _status_response(code: int, reason: str, message: str,
                     headers: dict[str, str] | None = None) -> aiohttp.web.Response:
    """A Kubernetes ``Status`` answer."""
    return aiohttp.web.json_response(
        {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
         "code": code, "reason": reason, "message": message}, status=code, headers=headers)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
