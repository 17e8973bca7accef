"""JSON in and out of the store, validated by pydantic where types are known."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any

from pydantic import TypeAdapter, ValidationError

from kenning.core.errors import InvalidInput

_ANY: TypeAdapter[Any] = TypeAdapter(Any)


@lru_cache(maxsize=1024)
def adapter_for(annotation: Any) -> TypeAdapter[Any]:
    """A cached pydantic adapter for a type annotation."""
    return TypeAdapter(annotation)


def dumps(value: Any) -> str:
    """Serialise a value (pydantic models included) to compact JSON text."""
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except TypeError:
        return _ANY.dump_json(value).decode()


def loads(text: str | None) -> Any:
    """Parse JSON text; ``None`` stays ``None``."""
    return None if text is None else json.loads(text)


def loads_or_text(text: str | None) -> Any:
    """``loads``, or the text itself where it is not JSON."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def to_jsonable(value: Any) -> Any:
    """Turn models, dataclasses, datetimes and the like into plain JSON values."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return _ANY.dump_python(value, mode="json")


def rebuild(value: Any, annotation: Any, what: str) -> Any:
    """Validate a plain JSON value into ``annotation`` (no-op when it is unannotated)."""
    if annotation is Any or annotation is None:
        return value
    try:
        return adapter_for(annotation).validate_python(value)
    except ValidationError as exc:
        raise InvalidInput(f"{what}: {_summarise(exc)}") from None
    except TypeError:  # an annotation pydantic cannot build an adapter for
        return value


def _summarise(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "value"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def summarise_validation(exc: ValidationError) -> str:
    """One line naming every invalid field of a pydantic error."""
    return _summarise(exc)
