"""``kenning send``: POST one CloudEvent (binary mode) to a Kenning sink or any CE endpoint."""

from __future__ import annotations

import json
import logging
import re
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import aiohttp
import click

from kenning.core.models import TARGET_RUN_EXTENSION, CloudEventRecord
from kenning.runtime import config
from kenning.runtime.cli_common import (
    EXIT_FAILED,
    EXIT_TIMEOUT,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    CliFailure,
    parse_json_option,
    run_async,
)
from kenning.runtime.outbox import binary_headers

log = logging.getLogger(__name__)

_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
_CORE_ATTRIBUTES = frozenset({"id", "source", "type", "specversion", "subject", "time",
                              "datacontenttype", "dataschema", "data"})


def _parse_extensions(pairs: tuple[str, ...]) -> dict[str, str]:
    extensions: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--extension")
        if not _EXTENSION_NAME.match(name):
            raise click.BadParameter(
                f"extension name {name!r} must be 1-20 lowercase letters or digits",
                param_hint="--extension")
        if name in _CORE_ATTRIBUTES:
            raise click.BadParameter(f"{name!r} is a core attribute; use --{name}",
                                     param_hint="--extension")
        extensions[name] = value
    return extensions


def event_url(base: str, namespace: str | None) -> str:
    """The sink URL for a namespace: ``<base>/namespaces/<ns>``, or ``base`` itself."""
    if not namespace:
        return base
    return f"{base.rstrip('/')}/namespaces/{quote(namespace, safe='')}"


@click.command()
@click.argument("event_type", metavar="TYPE")
@click.option("--data", "-d", callback=parse_json_option, default=None, metavar="JSON",
              help="The event's data (application/json). @FILE reads a file, @- stdin.")
@click.option("--source", default="/kenning/cli", show_default=True, help="ce-source.")
@click.option("--id", "event_id", default=None,
              help="ce-id; events are deduplicated per namespace on (source, id). Default: a new "
                   "UUID.")
@click.option("--subject", default=None, help="ce-subject.")
@click.option("--run", "run_id", default=None,
              help=f"Address the event to this run only (extension {TARGET_RUN_EXTENSION}).")
@click.option("--extension", "-e", "extensions", multiple=True, metavar="NAME=VALUE",
              help="A CloudEvents extension attribute; repeatable.")
@click.option("--url", envvar=config.ENV_SINK_URL, default=config.DEFAULT_SINK_URL,
              show_default=True, show_envvar=True, help="The sink's base URL.")
@click.option("--namespace", "-n", envvar=config.ENV_NAMESPACE, default=None, show_envvar=True,
              help="Post to <url>/namespaces/<ns>. Default: <url> (the sink's default "
                   "namespace).")
@click.option("--token", envvar=config.ENV_SINK_TOKEN, default=None, show_envvar=True,
              help="Bearer token the sink requires.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, metavar="SECONDS", help="HTTP timeout (exit code 5).")
def send(event_type: str, data: Any, source: str, event_id: str | None, subject: str | None,
         run_id: str | None, extensions: tuple[str, ...], url: str, namespace: str | None,
         token: str | None, timeout: float) -> None:
    """Send a CloudEvent of type TYPE to the sink and print its answer.

    The event goes in HTTP binary mode (ce-* headers, the data as the JSON body). A refusal
    (4xx/5xx) is an error: exit code 4 when the sink is unreachable or answers 503, 1
    otherwise.
    """
    ext = _parse_extensions(extensions)
    if run_id is not None:
        ext[TARGET_RUN_EXTENSION] = run_id
    record = CloudEventRecord(
        id=event_id or str(uuid.uuid4()), source=source, type=event_type, subject=subject,
        time=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        datacontenttype=None if data is None else "application/json",
        data=None if data is None else json.dumps(data, ensure_ascii=False),
        extensions=ext)
    target = event_url(url, namespace)
    status, body = run_async(_post(target, record, token, timeout))
    if status == 503:
        raise CliFailure(f"the sink at {target} is unavailable (503): {_reason(body)}",
                         EXIT_UNAVAILABLE)
    if not 200 <= status < 300:
        raise CliFailure(f"the sink at {target} refused the event ({status}): {_reason(body)}",
                         EXIT_FAILED)
    click.echo(body or str(status))


def _reason(body: str) -> str:
    """The ``error`` (or ``reason``) of a JSON error answer, else the body itself."""
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    if isinstance(doc, dict):
        for key in ("error", "reason"):
            if isinstance(doc.get(key), str):
                return str(doc[key])
    return body


async def _post(url: str, record: CloudEventRecord, token: str | None,
                timeout: float) -> tuple[int, str]:
    headers = binary_headers(record)
    if record.data is None:  # no body, no content type: an event without data
        headers.pop("content-type", None)
    if token:
        headers["authorization"] = f"Bearer {token}"
    body = (record.data or "").encode()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http, \
                http.post(url, data=body, headers=headers) as response:
            text = (await response.text()).strip()
            return response.status, " ".join(text.split())[:500]
    except TimeoutError:
        raise CliFailure(f"the sink at {url} did not answer within {timeout:g}s",
                         EXIT_TIMEOUT) from None
    except aiohttp.InvalidURL:
        raise CliFailure(f"invalid sink URL {url!r}", EXIT_USAGE) from None
    except aiohttp.ClientError as exc:
        raise CliFailure(f"cannot reach the sink at {url}: {exc}", EXIT_UNAVAILABLE) from None
