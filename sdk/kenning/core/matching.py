"""Evaluate a wait's ``match`` against an event: dotted paths to the values they must equal."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
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
    """True when every key of ``match`` holds in ``event`` (``None`` matches anything).

    Values compare as canonical JSON, so ``1`` and ``"1"`` differ in data; attributes and
    extensions are text, so an expected ``1`` equals the extension ``"1"``."""
    if not match:
        return True
    data: Any = _MISSING
    if any(k == "data" or k.startswith("data.") for k in match) and event.data is not None:
        data = json.loads(event.data)
    for key, expected in match.items():
        actual = event_value(event, key, data)
        if actual is _MISSING or canonical(actual) != _expected_text(key, expected):
            return False
    return True


def canonical(value: Any) -> str:
    """A value's canonical JSON text: sorted keys, no spaces, integral numbers as integers."""
    return json.dumps(_normal(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _normal(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, Mapping):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def _expected_text(key: str, expected: Any) -> str:
    """The canonical text an event's value must have to satisfy ``key: expected``."""
    is_data = key == "data" or key.startswith("data.")
    return canonical(expected if is_data or isinstance(expected, str) else json.dumps(expected))


# -- index keys ---------------------------------------------------------------------------
# A wait is indexed by one (path, value) row per match key; a wait without ``match`` by
# one row with the empty path. Long values are indexed by their digest: a collision only
# adds a candidate, which ``event_matches`` then rejects.
TYPE_ONLY = ("", "")
_LONGEST_KEY = 200


def _key_value(text: str) -> str:
    if len(text) <= _LONGEST_KEY:
        return text
    return "#" + hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def wait_keys(match: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """The (path, value) index rows of a wait's ``match``; all must be found in an event."""
    if not match:
        return [TYPE_ONLY]
    return [(key, _key_value(_expected_text(key, value))) for key, value in match.items()]


def event_keys(event: CloudEventRecord, paths: Iterable[str]) -> list[tuple[str, str]]:
    """The (path, value) index rows an event offers for the paths waits of its type use;
    absent paths offer none."""
    wanted = sorted(set(paths))
    data: Any = _MISSING
    if any(p == "data" or p.startswith("data.") for p in wanted) and event.data is not None:
        data = json.loads(event.data)
    keys = []
    for path in wanted:
        if path == "":
            keys.append(TYPE_ONLY)
            continue
        actual = event_value(event, path, data)
        if actual is not _MISSING:
            keys.append((path, _key_value(canonical(actual))))
    return keys
