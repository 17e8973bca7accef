"""The CloudEvents sink: an aiohttp app that commits events to the store.

A valid Knative Eventing Trigger target. ``POST /`` (the default namespace) and
``POST /namespaces/<ns>`` take structured, binary and batch mode, CloudEvents 1.0.
An event is answered 202 only after the store committed it. 4xx means "do not retry" to
Knative (the event is invalid); 5xx means "retry" (the store is down, or a bug). Responses
carry no ``ce-*`` headers, so Knative never mistakes them for reply events.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

from aiohttp import web

from kenning.core.errors import (
    ConfigurationError,
    InvalidEvent,
    InvalidInput,
    StoreOverloaded,
    StoreUnavailable,
)
from kenning.core.models import AcceptOutcome, CloudEventRecord
from kenning.core.outage import Outage
from kenning.core.store import Store
from kenning.runtime.metrics import SinkMetrics, render_metrics
from kenning.runtime.probe import StoreCheck, readiness, start_runner
from kenning.runtime.sink_parsing import parse_batch, parse_binary, parse_structured

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SINK_METRICS: Final = web.AppKey("kenning_sink_metrics", SinkMetrics)
"""The app's ``SinkMetrics`` (``app[SINK_METRICS]``)."""

STRUCTURED_CONTENT_TYPE: Final = "application/cloudevents+json"
BATCH_CONTENT_TYPE: Final = "application/cloudevents-batch+json"
READY_TIMEOUT: Final = 5.0
DEFAULT_MAX_IN_FLIGHT: Final = 512
RETRY_AFTER_UNAVAILABLE: Final = 2  # seconds a client is told to wait while the store is down

_NAMESPACE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")  # DNS-1123 label
_ALLOW: Final = "POST, OPTIONS"
_JSON: Final = "application/json"
_ACCEPTED: Final = b'{"status":"accepted"}'
_DUPLICATE: Final = b'{"status":"duplicate"}'


def create_sink_app(
    store: Store,
    *,
    default_namespace: str = "default",
    max_body_bytes: int = 1_048_576,
    token: str | None = None,
    metrics: SinkMetrics | None = None,
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
) -> web.Application:
    """The sink as an aiohttp application; the caller opens and closes ``store``.

    Args:
        store: where events are committed; ``ping`` answers ``/readyz``.
        default_namespace: the namespace of events posted to ``/``.
        max_body_bytes: larger requests get 413.
        token: when set, POST requires ``Authorization: Bearer <token>``.
        metrics: the metrics to count into (a new registry by default).
        max_in_flight: most POSTs being handled at once; more are answered 503 with
            ``Retry-After`` at once, so that overload is answered, not absorbed.
    """
    if not _NAMESPACE.fullmatch(default_namespace):
        raise ConfigurationError(
            f"sink default namespace {default_namespace!r} is not a valid Kubernetes "
            "namespace name (lower-case letters, digits and '-', at most 63 characters)"
        )
    if max_body_bytes <= 0:
        raise ConfigurationError(f"sink max_body_bytes must be positive, got {max_body_bytes}")
    if max_in_flight <= 0:
        raise ConfigurationError(f"sink max_in_flight must be positive, got {max_in_flight}")
    if token is not None and not token:
        raise ConfigurationError("sink token is empty: give a secret, or None for no auth")
    sink = _Sink(store, default_namespace, max_body_bytes, token, metrics or SinkMetrics(),
                 max_in_flight)
    app = web.Application(client_max_size=max_body_bytes, middlewares=[sink.json_errors])
    app[SINK_METRICS] = sink.metrics
    app.on_cleanup.append(sink.close)
    for path, post in (("/", sink.post_default), ("/namespaces/{namespace}", sink.post)):
        resource = app.router.add_resource(path)
        resource.add_route("POST", post)
        resource.add_route("OPTIONS", sink.options)
        resource.add_route("*", sink.not_allowed)
    app.router.add_get("/healthz", sink.healthz)
    app.router.add_get("/readyz", sink.readyz)
    app.router.add_get("/metrics", sink.metrics_page)
    return app


async def serve_sink(
    app: web.Application, host: str, port: int, *, access_log: bool = False
) -> web.AppRunner:
    """Start serving ``app`` on ``host:port`` (0 picks a free port; see ``runner.addresses``).

    Returns the runner; ``await runner.cleanup()`` stops it after in-flight commits finish.
    The access log is off by default: it costs more than the rest of a request.
    """
    # handler_cancellation=False: a client hanging up must not cancel a commit half-way.
    runner = await start_runner(web.AppRunner(
        app, handler_cancellation=False, access_log=log if access_log else None
    ), host, port)
    log.info("CloudEvents sink listening on %s", runner.addresses)
    return runner


class _Sink:
    """The handlers of one sink app and the state they share."""

    def __init__(
        self,
        store: Store,
        default_namespace: str,
        max_body_bytes: int,
        token: str | None,
        metrics: SinkMetrics,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
    ) -> None:
        self.store = store
        self.default_namespace = default_namespace
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics
        self._token = None if token is None else token.encode()
        self._ping = StoreCheck(lambda: store.ping(), READY_TIMEOUT)
        self.max_in_flight = max_in_flight
        self._in_flight = 0
        self._outage = Outage("sink committing events", log)

    async def close(self, app: web.Application) -> None:
        """Cancel a readiness check still in flight."""
        await self._ping.close()

    # -- POST ------------------------------------------------------------------------------
    async def post_default(self, request: web.Request) -> web.Response:
        """``POST /``: events for the default namespace."""
        return await self._timed(request, self.default_namespace)

    async def post(self, request: web.Request) -> web.Response:
        """``POST /namespaces/<ns>``."""
        return await self._timed(request, request.match_info["namespace"])

    async def _timed(self, request: web.Request, namespace: str) -> web.Response:
        if self._in_flight >= self.max_in_flight:
            return self._reject(
                503, "overloaded",
                f"the sink is handling {self.max_in_flight} requests already; nothing was "
                "accepted, retry later", {"Retry-After": "1"})
        self._in_flight += 1
        started = time.perf_counter()
        try:
            return await self._receive(request, namespace)
        finally:
            self._in_flight -= 1
            self.metrics.request_seconds.observe(time.perf_counter() - started)

    async def _receive(self, request: web.Request, namespace: str) -> web.Response:
        if self._token is not None and not self._authorized(request):
            return self._reject(
                401, "unauthorized", "missing or wrong bearer token in the Authorization header",
                {"WWW-Authenticate": 'Bearer realm="kenning-sink"'},
            )
        if not _NAMESPACE.fullmatch(namespace):
            return self._reject(400, "invalid_namespace", _bad_namespace(namespace))
        length = request.content_length
        if length is not None and length > self.max_body_bytes:
            return self._too_large(f"{length} bytes")
        content_type = request.content_type
        if content_type == STRUCTURED_CONTENT_TYPE:
            mode = "structured"
        elif content_type == BATCH_CONTENT_TYPE:
            mode = "batch"
        elif "ce-specversion" in request.headers and not content_type.startswith(
            "application/cloudevents"
        ):
            mode = "binary"
        else:
            return self._reject(415, "unsupported_media_type", _unsupported(request))
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large("the body")
        try:
            if mode == "structured":
                records = [parse_structured(body)]
            elif mode == "binary":
                records = [parse_binary(request.headers, body)]
            else:
                records = parse_batch(body)
        except InvalidEvent as exc:
            return self._reject(400, "invalid_event", str(exc))
        except (ValueError, TypeError, KeyError, UnicodeError) as exc:
            # what the CloudEvents library raises on headers it cannot read
            return self._reject(400, "invalid_event",
                                f"invalid CloudEvent: {type(exc).__name__}: {exc}"[:500])
        return await self._commit(namespace, records, batch=mode == "batch")

    async def _commit(
        self, namespace: str, records: list[CloudEventRecord], *, batch: bool
    ) -> web.Response:
        if not records:  # an empty batch: nothing to commit
            return _json_response(202, {"status": "accepted", "accepted": 0, "duplicates": 0})
        try:
            results = await self.store.accept_events(namespace, records)
        except InvalidInput as exc:  # what the store's own checks refuse: the sender's fault
            return self._reject(400, "invalid_event", str(exc))
        except StoreOverloaded as exc:
            return self._reject(
                503, "overloaded", "the store is overloaded; nothing was accepted, retry later",
                {"Retry-After": str(max(1, math.ceil(exc.retry_after)))})
        except StoreUnavailable as exc:
            self._outage.failed(exc)  # logged once per outage, not per request
            return self._reject(503, "store_unavailable",
                                "the store is unavailable; nothing was accepted, retry later",
                                {"Retry-After": str(RETRY_AFTER_UNAVAILABLE)})
        except Exception:
            log.exception("sink: committing %d event(s) for namespace %s failed",
                          len(records), namespace)
            return self._reject(500, "internal_error",
                                "internal error; nothing was accepted, retry later")
        self._outage.recovered()
        accepted, duplicates = self.metrics.committed(results)
        if batch:
            return _json_response(
                202, {"status": "accepted", "accepted": accepted, "duplicates": duplicates}
            )
        body = _ACCEPTED if results[0].outcome is AcceptOutcome.ACCEPTED else _DUPLICATE
        return web.Response(status=202, body=body, content_type=_JSON)

    def _authorized(self, request: web.Request) -> bool:
        assert self._token is not None
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        given = credentials.strip().encode("utf-8", "surrogateescape")
        return scheme.lower() == "bearer" and hmac.compare_digest(given, self._token)

    def _too_large(self, what: str) -> web.Response:
        return self._reject(
            413, "too_large", f"{what} exceeds the sink's limit of {self.max_body_bytes} bytes"
        )

    def _reject(
        self, status: int, reason: str, message: str, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        self.metrics.reject(reason)
        if status < 500:
            # debug: bad traffic must not flood the logs (it is counted in the metrics);
            # %r: the message quotes what the client sent; keep it on one log line.
            log.debug("sink: rejected a request with %d (%s): %r", status, reason, message)
        return _json_response(status, {"error": message}, headers)

    @web.middleware
    async def json_errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every error answer in JSON: unknown paths (404), methods (405), and bugs (500)."""
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return self._reject(404, "not_found", f"no such path {request.path!r}: POST events "
                                "to / or /namespaces/<namespace>")
        except web.HTTPMethodNotAllowed as exc:
            return self._reject(405, "method_not_allowed",
                                f"method {request.method} is not allowed on {request.path!r}",
                                {"Allow": ", ".join(sorted(exc.allowed_methods))})
        except web.HTTPException as exc:
            if exc.status >= 500:
                raise
            return self._reject(exc.status, "invalid_request", exc.reason)
        except Exception:
            log.exception("sink: unexpected error answering %s %s", request.method,
                          request.path)
            return self._reject(500, "internal_error",
                                "internal error; nothing was accepted, retry later")

    # -- other methods ---------------------------------------------------------------------
    async def options(self, request: web.Request) -> web.Response:
        """``OPTIONS``: the allowed methods and the CloudEvents webhook handshake."""
        namespace = request.match_info.get("namespace")
        if namespace is not None and not _NAMESPACE.fullmatch(namespace):
            return _json_response(400, {"error": _bad_namespace(namespace)})
        headers = {"Allow": _ALLOW}
        origin = request.headers.get("WebHook-Request-Origin")
        if origin is not None:
            headers["WebHook-Allowed-Origin"] = origin
            if "WebHook-Request-Rate" in request.headers:
                headers["WebHook-Allowed-Rate"] = "*"
        return web.Response(status=200, headers=headers)

    async def not_allowed(self, request: web.Request) -> web.Response:
        """Any other method on the event paths: 405."""
        return self._reject(
            405, "method_not_allowed",
            f"method {request.method} is not allowed here; POST CloudEvents", {"Allow": _ALLOW})

    async def healthz(self, request: web.Request) -> web.Response:
        """``GET /healthz``: the process answers."""
        return web.Response(body=b'{"status":"ok"}', content_type=_JSON)

    async def readyz(self, request: web.Request) -> web.Response:
        """``GET /readyz``: 200 when the store answers a ping, else 503 with the reason."""
        reason = await readiness(self._ping)
        if reason is None:
            return web.Response(body=b'{"status":"ready"}', content_type=_JSON)
        return _json_response(503, {"status": "unavailable", "reason": reason})

    async def metrics_page(self, request: web.Request) -> web.Response:
        """``GET /metrics``: Prometheus text (or OpenMetrics when asked for)."""
        body, content_type = render_metrics(self.metrics.registry, request.headers.get("Accept"))
        return web.Response(body=body, headers={"Content-Type": content_type})


def _json_response(
    status: int, payload: Mapping[str, Any], headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(payload).encode(), content_type=_JSON, headers=headers
    )


def _bad_namespace(namespace: str) -> str:
    return (
        f"namespace {namespace!r} is not a valid Kubernetes namespace name "
        "(lower-case letters, digits and '-', starting and ending with a letter or digit, "
        "at most 63 characters)"
    )


def _unsupported(request: web.Request) -> str:
    given = request.headers.get("Content-Type", "no Content-Type")
    return (
        f"unsupported content type ({given}): send a CloudEvent in structured mode "
        f"({STRUCTURED_CONTENT_TYPE}), batch mode ({BATCH_CONTENT_TYPE}) or binary mode "
        "(ce-* headers with ce-specversion)"
    )
