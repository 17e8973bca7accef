"""Evaluate a wait's ``match`` against an event: dotted paths to the values they must equal."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from kenning.core.errors import ConfigurationError
from kenning.core.models import CloudEventRecord

_ATTRIBUTES = ("id", "source", "type", "subject", "time", "datacontenttype", "dataschema")
_EXTENSION_NAME = re.compile(r"^[a-z0-9]{1,20}$")
_MISSING = object()


def validate_match(match: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Check a ``match`` mapping's keys and make its values JSON; raise on a bad key."""
    if not match:
        return None
    checked: dict[str, Any] = {}
    for key, value in match.items():
        if not isinstance(key, str) or not key:
            raise ConfigurationError(f"match key {key!r} must be a non-empty string")
        head = key.split(".", 1)[0]
        if head != "data" and "." in key:
            raise ConfigurationError(
                f"match key {key!r}: only 'data.<path>' may have dots; "
                f"use an attribute ({', '.join(_ATTRIBUTES)}) or an extension name"
            )
        if head != "data" and head not in _ATTRIBUTES and not _EXTENSION_NAME.match(head):
            raise ConfigurationError(
                f"match key {key!r} is neither 'data.<path>', a CloudEvents attribute "
                f"nor an extension name (lower-case letters and digits, at most 20)"
            )
        try:
            json.dumps(value)
        except TypeError:
            raise ConfigurationError(f"match value for {key!r} must be JSON") from None
        checked[key] = value
    return checked


def event_value(event: CloudEventRecord, key: str, data: Any = _MISSING) -> Any:
    """The value at a match key in an event, or a sentinel when absent."""
    head, _, rest = key.partition(".")
    if head == "data":
        value = json.loads(event.data) if data is _MISSING and event.data else data
        if value is _MISSING:
            return _MISSING
        for part in rest.split(".") if rest else ():
            if isinstance(value, Mapping) and part in value:
                value = value[part]
            elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
                value = value[int(part)]
            else:
                return _MISSING
        return value
    if head in _ATTRIBUTES:
        attr = getattr(event, head)
        return _MISSING if attr is None else attr
    return event.extensions.get(head, _MISSING)


def event_matches(event: CloudEventRecord, match: Mapping[str, Any] | None) -> bool:
    """True when every key of ``match`` holds in ``event`` (``None`` matches anything)."""
    if not match:
        return True
    data: Any = _MISSING
    if any(k == "data" or k.startswith("data.") for k in match) and event.data is not None:
        data = json.loads(event.data)
    for key, expected in match.items():
        actual = event_value(event, key, data)
        if actual is _MISSING:
            return False
        if actual != expected and not (isinstance(actual, str) and actual == _as_text(expected)):
            return False
    return True


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)
