"""A small async Kubernetes API client on aiohttp, logged in with kopf's credentials.

kopf's own API access is private; the sync ``kubernetes`` client would block the event loop,
and the operator needs only a handful of calls: get, list, watch, create, merge-patch,
JSON-patch, delete. ``WorkflowRun``s are listed and watched with it (``informer``), not
through kopf.

Like kopf's own client, it logs in again when the API server answers 401 (a projected
service-account token rotates: the login function re-reads it), and it waits and retries
when the server answers 429 (API Priority and Fairness) or 503, honouring ``Retry-After``.
Every refusal is a ``KubeError`` (a ``KenningError``), typed by its status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aiohttp
import kopf

from kenning import __version__
from kenning.core.errors import KenningError

log = logging.getLogger(__name__)

Body = dict[str, Any]
Login = Callable[[], kopf.ConnectionInfo]

USER_AGENT = f"kenning-operator/{__version__}"
RETRY_STATUSES = (429, 503)
WATCH_SECONDS = 300
"""How long the API server keeps one watch request open (``timeoutSeconds``); the watch
then resumes from the last ``resourceVersion`` seen."""
MAX_RETRY_AFTER = 30.0
"""The longest ``Retry-After`` honoured as given (seconds); longer ones are capped."""


class KubeError(KenningError):
    """The API server refused a request (``status``, ``reason`` as it answered)."""

    def __init__(self, status: int, reason: str, message: str, *, what: str = "") -> None:
        where = f"{what}: " if what else ""
        super().__init__(f"{where}{status} {reason}: {message}")
        self.status = status
        self.reason = reason


class Unauthorized(KubeError):
    """401: the credentials were refused even after logging in again; check the service
    account token or kubeconfig."""


class Forbidden(KubeError):
    """403: the RBAC of the operator's service account does not allow the call."""


class NotFound(KubeError):
    """404: no such object (or resource type)."""


class Conflict(KubeError):
    """409: a precondition (uid, resourceVersion) failed or the object exists."""


class Invalid(KubeError):
    """422: the object or patch was refused as invalid (or a JSON-patch ``test`` failed)."""


class Gone(KubeError):
    """410: the ``resourceVersion`` a watch or a list page asked for is too old (compacted):
    list again."""


class TooManyRequests(KubeError):
    """429: the API server kept asking the operator to slow down (retries spent)."""


_TYPED: dict[int, type[KubeError]] = {401: Unauthorized, 403: Forbidden, 404: NotFound,
                                      409: Conflict, 410: Gone, 422: Invalid,
                                      429: TooManyRequests}


def kube_error(status: int, reason: str, message: str, *, what: str = "") -> KubeError:
    """The ``KubeError`` subclass of an HTTP status."""
    return _TYPED.get(status, KubeError)(status, reason, message, what=what)


def resource_path(api_version: str, plural: str, namespace: str | None,
                  name: str | None = None, subresource: str | None = None) -> str:
    """``/apis/<group>/<version>/namespaces/<ns>/<plural>[/<name>[/<sub>]]``."""
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    path = f"{root}/namespaces/{namespace}/{plural}" if namespace else f"{root}/{plural}"
    if name:
        path += f"/{name}"
        if subresource:
            path += f"/{subresource}"
    return path


def retry_delay(retry_after: str | None, attempt: int, *, base: float = 0.05,
                cap: float = 5.0) -> float:
    """Seconds to wait before retry ``attempt`` (0-based): ``Retry-After`` when the server
    gave one (capped), else capped exponential backoff with full jitter."""
    if retry_after is not None:
        try:
            return min(MAX_RETRY_AFTER, max(0.0, float(retry_after)))
        except ValueError:
            pass  # an HTTP date: fall back to backoff
    return random.uniform(0, min(cap, base * 2 ** attempt))


class KubeClient:
    """Calls the API server the operator is logged in to."""

    def __init__(self, info: kopf.ConnectionInfo, *, relogin: Login | None = None,
                 max_retries: int = 8) -> None:
        self.relogin = relogin
        """Called for fresh credentials after a 401 (None: the first ones are kept)."""
        self.max_retries = max_retries
        """Retries of a call answered 429/503 before ``TooManyRequests`` is raised."""
        self.retried = 0
        """Calls retried after 429/503 so far."""
        self.relogins = 0
        """Fresh logins after a 401 so far."""
        self._session: aiohttp.ClientSession | None = None
        self._use(info)

    def _use(self, info: kopf.ConnectionInfo) -> None:
        self.server = info.server.rstrip("/")
        self._headers = {"Accept": "application/json", "User-Agent": USER_AGENT,
                         **info.as_http_headers()}
        self._ssl = _ssl_context(info)

    async def __aenter__(self) -> KubeClient:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=64),
            timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/json",
                      params: Mapping[str, str] | None = None, *,
                      answer: bool = True) -> Body:
        """One call; raises a ``KubeError`` subclass for any non-2xx answer. With
        ``answer=False`` the object the server answers with is not parsed ({} instead)."""
        if self._session is None:
            raise RuntimeError("KubeClient used outside 'async with'")
        relogged = False
        attempt = 0
        while True:
            headers = dict(self._headers)
            if body is not None:
                headers["Content-Type"] = content_type
            async with self._session.request(method, self.server + path, json=body,
                                             headers=headers, params=params) as resp:
                if resp.status < 300 and not answer:
                    await resp.read()
                    return {}
                data: Any = await resp.json(content_type=None) \
                    if resp.content_length != 0 else {}
                if resp.status < 300:
                    return data if isinstance(data, dict) else {}
                refusal = _refusal(resp, data)
            relogged, attempt = await self._after_refusal(refusal, relogged, attempt,
                                                          f"{method} {path}")

    async def _after_refusal(self, refusal: tuple[int, str, str, str | None], relogged: bool,
                             attempt: int, what: str) -> tuple[bool, int]:
        """Log in again after a 401 (once) or wait out a 429/503 (``max_retries`` times);
        otherwise raise the refusal as a ``KubeError``. Returns the new (relogged, attempt)."""
        status, reason, message, retry_after = refusal
        if status == 401 and not relogged and self.relogin is not None:
            await self._login_again()
            return True, attempt
        if status in RETRY_STATUSES and attempt < self.max_retries:
            self.retried += 1
            await asyncio.sleep(retry_delay(retry_after, attempt))
            return relogged, attempt + 1
        raise kube_error(status, reason, message, what=what)

    async def list_all(self, path: str, *, limit: int = 500) -> tuple[list[Body], str]:
        """Every object of a collection, read in pages of ``limit``, and the
        ``resourceVersion`` of that listing (a watch from it misses nothing)."""
        items: list[Body] = []
        token = ""
        version = ""
        while True:
            params = {"limit": str(limit), **({"continue": token} if token else {})}
            page = await self.request("GET", path, params=params)
            items.extend(page.get("items") or [])
            meta = page.get("metadata") or {}
            version = version or str(meta.get("resourceVersion") or "")
            token = str(meta.get("continue") or "")
            if not token:
                return items, version

    async def watch(self, path: str, resource_version: str, *,
                    timeout_seconds: int = WATCH_SECONDS) -> AsyncIterator[Body]:
        """The watch events of a collection after ``resource_version`` (bookmarks
        included), until the API server ends the stream. A 401 logs in again, 429/503
        wait; ``Gone`` (410) means: list again."""
        if self._session is None:
            raise RuntimeError("KubeClient used outside 'async with'")
        params = {"watch": "true", "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(timeout_seconds),
                  **({"resourceVersion": resource_version} if resource_version else {})}
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30,
                                        sock_read=timeout_seconds + 30)
        relogged = False
        attempt = 0
        while True:
            async with self._session.get(self.server + path, params=params,
                                         headers=self._headers, timeout=timeout) as resp:
                if resp.status < 300:
                    async for event in _json_lines(resp.content):
                        yield event
                    return
                data: Any = await resp.json(content_type=None) \
                    if resp.content_length != 0 else {}
                refusal = _refusal(resp, data)
            relogged, attempt = await self._after_refusal(refusal, relogged, attempt,
                                                          f"WATCH {path}")

    async def _login_again(self) -> None:
        assert self.relogin is not None
        info = await asyncio.to_thread(self.relogin)
        self.relogins += 1
        self._use(info)
        log.info("the API server refused the credentials (401): logged in again")

    async def get(self, path: str) -> Body | None:
        """The object at ``path``, or ``None`` if there is none."""
        try:
            return await self.request("GET", path)
        except NotFound:
            return None

    async def create(self, path: str, body: Body) -> Body:
        """POST a new object to a collection path."""
        return await self.request("POST", path, body)

    async def merge_patch(self, path: str, patch: Body, *,
                          answer: bool = True) -> Body | None:
        """Merge-patch an object; ``None`` if it is gone (``answer=False``: {} if not)."""
        try:
            return await self.request("PATCH", path, patch, "application/merge-patch+json",
                                      answer=answer)
        except NotFound:
            return None

    async def json_patch(self, path: str, ops: list[dict[str, Any]], *,
                         answer: bool = True) -> Body | None:
        """JSON-patch an object (``test`` ops are preconditions: 422 if one fails);
        ``None`` if it is gone (``answer=False``: {} if not)."""
        try:
            return await self.request("PATCH", path, ops, "application/json-patch+json",
                                      answer=answer)
        except NotFound:
            return None

    async def delete(self, path: str, *, uid: str | None = None) -> bool:
        """Delete an object (only that incarnation when ``uid`` is given); False if gone."""
        body = {"preconditions": {"uid": uid}} if uid else None
        try:
            await self.request("DELETE", path, body)
        except (NotFound, Conflict):
            return False
        return True


def _refusal(resp: aiohttp.ClientResponse, data: Any) -> tuple[int, str, str, str | None]:
    """(status, reason, message, Retry-After) of a non-2xx answer."""
    info = data if isinstance(data, dict) else {}
    return (resp.status, str(info.get("reason", resp.reason)),
            str(info.get("message", data)), resp.headers.get("Retry-After"))


async def _json_lines(content: aiohttp.StreamReader) -> AsyncIterator[Body]:
    """The JSON objects of a watch stream, one a line (however long the line)."""
    buffer = bytearray()
    async for chunk in content.iter_any():
        buffer += chunk
        start = 0
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[start:end])
            start = end + 1
            if line.strip():
                event = json.loads(line)
                if isinstance(event, dict):
                    yield event
        del buffer[:start]
    if buffer.strip():
        event = json.loads(bytes(buffer))
        if isinstance(event, dict):
            yield event


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    """kopf's own SSL context for https servers (CA, client certificate, insecure flag)."""
    return info.as_ssl_context() if info.server.startswith("https") else False
