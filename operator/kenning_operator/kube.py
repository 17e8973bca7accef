"""A small async Kubernetes API client on aiohttp, logged in with kopf's credentials.

kopf's own API access is private; the sync ``kubernetes`` client would block the event loop,
and the operator needs only a handful of calls: get, create, merge-patch, delete, events.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp
import kopf

log = logging.getLogger(__name__)

Body = dict[str, Any]


class KubeError(Exception):
    """The API server refused a request."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason


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


class KubeClient:
    """Calls the API server the operator is logged in to."""

    def __init__(self, info: kopf.ConnectionInfo) -> None:
        self.server = info.server.rstrip("/")
        self._headers = {"Accept": "application/json", **info.as_http_headers()}
        self._ssl = _ssl_context(info)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> KubeClient:
        self._session = aiohttp.ClientSession(
            headers=self._headers, connector=aiohttp.TCPConnector(ssl=self._ssl, limit=64),
            timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, body: Any = None,
                      content_type: str = "application/json",
                      params: Mapping[str, str] | None = None) -> Body:
        """One call; raises ``KubeError`` for any non-2xx answer."""
        if self._session is None:
            raise RuntimeError("KubeClient used outside 'async with'")
        headers = {"Content-Type": content_type} if body is not None else {}
        async with self._session.request(method, self.server + path, json=body, headers=headers,
                                         params=params) as resp:
            data: Any = await resp.json(content_type=None) if resp.content_length != 0 else {}
            if resp.status >= 300:
                info = data if isinstance(data, dict) else {}
                raise KubeError(resp.status, str(info.get("reason", resp.reason)),
                                str(info.get("message", data)))
            return data if isinstance(data, dict) else {}

    async def get(self, path: str) -> Body | None:
        """The object at ``path``, or ``None`` if there is none."""
        try:
            return await self.request("GET", path)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def create(self, path: str, body: Body) -> Body:
        """POST a new object to a collection path."""
        return await self.request("POST", path, body)

    async def merge_patch(self, path: str, patch: Body) -> Body | None:
        """Merge-patch an object; ``None`` if it is gone."""
        try:
            return await self.request("PATCH", path, patch, "application/merge-patch+json")
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise

    async def delete(self, path: str, *, uid: str | None = None) -> bool:
        """Delete an object (only that incarnation when ``uid`` is given); False if gone."""
        body = {"preconditions": {"uid": uid}} if uid else None
        try:
            await self.request("DELETE", path, body)
        except KubeError as exc:
            if exc.status in (404, 409):
                return False
            raise
        return True


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    """kopf's own SSL context for https servers (CA, client certificate, insecure flag)."""
    return info.as_ssl_context() if info.server.startswith("https") else False
