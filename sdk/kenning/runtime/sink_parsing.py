"""HTTP request -> ``CloudEventRecord``: the CloudEvents 1.0 HTTP binding, read strictly.

Binary mode goes through ``cloudevents.core.bindings.http.from_binary`` and every event is
validated by the library's v1 ``CloudEvent``. Around the library this module adds what a
durable sink needs and the library does not do:

- a missing ``id``, ``specversion`` or ``time`` is an error, never invented (the library's
  ``CloudEvent`` defaults them, which would defeat deduplication on (source, id));
- ``time`` must be RFC 3339; extension names are at most 20 characters; extension values are
  strings, integers or booleans; attribute strings hold no control characters (spec 1.0.2);
- data declared JSON must be JSON (the library falls back to text silently);
- batch mode (the library has none), and a structured body is parsed once, straight into the
  JSON text of the data that the store keeps.

Every error is an ``InvalidEvent`` whose message names the attribute (and, in a batch, the
index of the event).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final
from urllib.parse import unquote

from cloudevents.core.bindings.http import HTTPMessage, from_binary
from cloudevents.core.exceptions import CloudEventValidationError, InvalidAttributeTypeError
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from kenning.core.errors import InvalidEvent
from kenning.core.models import CloudEventRecord

SPECVERSION: Final = "1.0"
MAX_EXTENSION_NAME: Final = 20
MAX_JSON_DEPTH: Final = 64
"""Most nesting of arrays and objects a JSON body (or an event's data) may have."""

_JSON_FORMAT: Final = JSONFormat()
_REQUIRED: Final = ("id", "source", "type", "specversion")
_CORE: Final = frozenset({*_REQUIRED, "subject", "time", "datacontenttype", "dataschema"})
_DATA_MEMBERS: Final = frozenset({"data", "data_base64"})
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
# CloudEvents 1.0.2 "String": no control characters, no surrogate code points.
_FORBIDDEN_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_JSON_CONTENT_TYPE = JSONFormat.JSON_CONTENT_TYPE_PATTERN


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


# One decoder, built once: strict JSON (no NaN/Infinity, which no database takes back).
_STRICT_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def parse_structured(body: bytes) -> CloudEventRecord:
    """One event from a structured-mode body (``application/cloudevents+json``)."""
    return record_from_json(_load_json(body))


def parse_batch(body: bytes) -> list[CloudEventRecord]:
    """Every event of a batch-mode body (``application/cloudevents-batch+json``).

    All or nothing: the first invalid event raises ``InvalidEvent`` naming its index.
    """
    items = _load_json(body)
    if not isinstance(items, list):
        raise InvalidEvent(f"a batch must be a JSON array of CloudEvents, got {_kind(items)}")
    records = []
    for index, item in enumerate(items):
        try:
            records.append(record_from_json(item))
        except InvalidEvent as exc:
            raise InvalidEvent(f"batch event at index {index}: {exc}") from None
    return records


def parse_binary(headers: Mapping[str, str], body: bytes) -> CloudEventRecord:
    """One event from a binary-mode request: ``ce-*`` headers, the body is the data.

    JSON content types give JSON data; any other body travels as ``data_base64``; an empty
    body means no data. Without a Content-Type, a body that parses as JSON is JSON data.
    """
    ce_headers: dict[str, str] = {}
    content_type: str | None = None
    for name, value in headers.items():
        lower = name.lower()
        if lower.startswith("ce-"):
            ce_headers[lower] = value
        elif lower == "content-type":
            content_type = value
    # Validated here (RFC 3339, stricter than the library) and kept out of the library's way.
    raw_time = ce_headers.pop("ce-time", None)
    time_text = None if raw_time is None else format_time(parse_time(unquote(raw_time)))
    if content_type is not None:
        ce_headers["content-type"] = content_type
    # The body is decoded here, not by the library: it must not fall back to text silently.
    event = from_binary(HTTPMessage(ce_headers, b""), _JSON_FORMAT, _binary_factory)
    data, data_base64 = _data_from_body(body, content_type)
    return _record(event.get_attributes(), time_text, data, data_base64)


def record_from_json(event: Any) -> CloudEventRecord:
    """Validate one event of the JSON event format (already decoded) into a record."""
    if not isinstance(event, dict):
        raise InvalidEvent(f"a CloudEvent must be a JSON object, got {_kind(event)}")
    # A JSON null attribute is treated as absent.
    attributes = {
        name: value
        for name, value in event.items()
        if value is not None and name not in _DATA_MEMBERS
    }
    time_text: str | None = None
    raw_time = attributes.get("time")
    if raw_time is not None:
        if not isinstance(raw_time, str):
            raise InvalidEvent(
                f"attribute 'time' must be an RFC 3339 timestamp string, got {_kind(raw_time)}"
            )
        moment = parse_time(raw_time)
        attributes["time"] = moment
        time_text = format_time(moment)
    _validate(attributes)
    data, data_base64 = _data_from_json(event, attributes.get("datacontenttype"))
    return _record(attributes, time_text, data, data_base64)


def parse_time(text: str) -> datetime:
    """An RFC 3339 timestamp as an aware datetime; ``InvalidEvent`` names what is wrong."""
    if not _RFC3339.fullmatch(text):
        raise InvalidEvent(
            f"attribute 'time' {text!r} is not an RFC 3339 timestamp "
            "(like 2024-05-01T12:30:00Z or 2024-05-01T14:30:00.5+02:00)"
        )
    try:
        return datetime.fromisoformat(text.upper())
    except ValueError as exc:
        raise InvalidEvent(f"attribute 'time' {text!r} is not a valid timestamp: {exc}") from None


def format_time(moment: datetime) -> str:
    """The ISO 8601 / RFC 3339 text Kenning stores, ``Z`` for UTC."""
    text = moment.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


# -- internals ---------------------------------------------------------------------------


def _binary_factory(attributes: dict[str, Any], data: Any) -> CloudEvent:
    """The event factory handed to ``from_binary``: strict validation, then the library's."""
    return _validate(attributes)


def _validate(attributes: dict[str, Any]) -> CloudEvent:
    """Check what the library does not, then let the library's v1 event validate the rest."""
    for name in _REQUIRED:
        if name not in attributes:
            raise InvalidEvent(f"missing required attribute '{name}'")
    specversion = attributes["specversion"]
    if specversion != SPECVERSION:
        raise InvalidEvent(
            f"attribute 'specversion' must be \"1.0\" (only CloudEvents 1.0 is accepted), "
            f"got {specversion!r}"
        )
    for name, value in attributes.items():
        if name not in _CORE:
            if len(name) > MAX_EXTENSION_NAME:
                raise InvalidEvent(
                    f"extension attribute name '{name}' is longer than "
                    f"{MAX_EXTENSION_NAME} characters"
                )
            if not isinstance(value, (str, int)):  # bool is an int
                raise InvalidEvent(
                    f"extension attribute '{name}' must be a string, integer or boolean, "
                    f"got {_kind(value)}"
                )
        if isinstance(value, str) and _FORBIDDEN_CHARS.search(value):
            raise InvalidEvent(
                f"attribute '{name}' contains a control character or an unpaired surrogate"
            )
    try:
        # The library mutates its argument (it adds a default time): give it a copy.
        return CloudEvent(dict(attributes))
    except CloudEventValidationError as exc:
        raise InvalidEvent(_describe(exc)) from None


def _describe(exc: CloudEventValidationError) -> str:
    parts = []
    for name, errors in exc.errors.items():
        error = errors[0]
        if isinstance(error, InvalidAttributeTypeError):
            parts.append(f"attribute '{name}' must be a string")
        else:
            parts.append(str(error))
    return "invalid CloudEvent: " + "; ".join(parts)


def _data_from_json(
    event: dict[str, Any], datacontenttype: Any
) -> tuple[str | None, str | None]:
    """(JSON text, base64) of a JSON-format event's ``data`` or ``data_base64``."""
    data = event.get("data")
    encoded = event.get("data_base64")
    if encoded is not None:
        if data is not None:
            raise InvalidEvent("an event must not carry both 'data' and 'data_base64'")
        if not isinstance(encoded, str):
            raise InvalidEvent(f"'data_base64' must be a base64 string, got {_kind(encoded)}")
        try:
            base64.b64decode(encoded, validate=True)
        except binascii.Error as exc:
            raise InvalidEvent(f"'data_base64' is not valid base64: {exc}") from None
        return None, encoded
    if data is None:
        return None, None
    if (
        isinstance(data, str)
        and isinstance(datacontenttype, str)
        and not _is_json_type(datacontenttype)
    ):
        # Text of a non-JSON type: kept as bytes, as the same event in binary mode would be.
        return None, base64.b64encode(_utf8(data, "data")).decode("ascii")
    return _json_text(data), None


def _data_from_body(body: bytes, content_type: str | None) -> tuple[str | None, str | None]:
    """(JSON text, base64) of a binary-mode body."""
    if not body:
        return None, None
    declared_json = content_type is not None and _is_json_type(content_type)
    if content_type is None or declared_json:
        try:
            value = _decode_json(body.decode("utf-8"))
        except InvalidEvent:
            raise
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError alike
            if declared_json:
                raise InvalidEvent(
                    f"the data is not valid JSON although Content-Type is {content_type!r}: "
                    f"{exc}"
                ) from None
        else:
            return _json_text(value), None
    return None, base64.b64encode(body).decode("ascii")


def _record(
    attributes: Mapping[str, Any],
    time_text: str | None,
    data: str | None,
    data_base64: str | None,
) -> CloudEventRecord:
    extensions = {
        name: _extension_text(value) for name, value in attributes.items() if name not in _CORE
    }
    return CloudEventRecord(
        id=attributes["id"],
        source=attributes["source"],
        type=attributes["type"],
        specversion=SPECVERSION,
        subject=attributes.get("subject"),
        time=time_text,
        datacontenttype=attributes.get("datacontenttype"),
        dataschema=attributes.get("dataschema"),
        data=data,
        data_base64=data_base64,
        extensions=extensions,
    )


def _load_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent(f"the body is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        return _decode_json(text)
    except ValueError as exc:
        if isinstance(exc, InvalidEvent):
            raise
        raise InvalidEvent(f"the body is not valid JSON: {exc}") from None


def _too_deep() -> InvalidEvent:
    return InvalidEvent(f"the JSON nests arrays and objects deeper than the limit of "
                        f"{MAX_JSON_DEPTH} levels")


def _decode_json(text: str) -> Any:
    """Strict JSON of at most ``MAX_JSON_DEPTH`` levels (``InvalidEvent`` beyond; a
    ``ValueError`` for invalid JSON)."""
    # Cheap first: fewer brackets than the limit cannot nest deeper than it.
    shallow = text.count("[") + text.count("{") <= MAX_JSON_DEPTH
    try:
        value = _STRICT_JSON.decode(text)
    except RecursionError:
        raise _too_deep() from None
    if not shallow and _depth_exceeds(value, MAX_JSON_DEPTH):
        raise _too_deep()
    return value


def _depth_exceeds(value: Any, limit: int) -> bool:
    """True when ``value`` nests containers more than ``limit`` deep (no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children: Iterable[Any]
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children
                     if isinstance(child, (dict, list)))
    return False


def _json_text(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if not text.isascii():  # O(1) in CPython: only non-ASCII text pays for the check
        _utf8(text, "data")
    return text


def _utf8(text: str, what: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEvent(f"{what} contains an unpaired UTF-16 surrogate") from None


def _is_json_type(content_type: str) -> bool:
    return _JSON_CONTENT_TYPE.match(content_type.lower()) is not None


def _extension_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def _kind(value: Any) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else type(value).__name__
