"""Events as workflows see them: ``ReceivedEvent`` and ``decode_event_data``."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter, ValidationError

from kenning.core import codec
from kenning.core.errors import EventDataError
from kenning.core.models import CloudEventRecord

M = TypeVar("M")


@dataclass(frozen=True, slots=True)
class ReceivedEvent:
    """A CloudEvent a workflow received. ``data`` is decoded JSON, or bytes for binary data."""

    type: str
    source: str
    id: str
    subject: str | None = None
    time: str | None = None
    data: Any = None
    datacontenttype: str | None = None
    extensions: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_record(cls, record: CloudEventRecord) -> ReceivedEvent:
        """Build from the stored form."""
        if record.data_base64 is not None:
            data: Any = base64.b64decode(record.data_base64)
        else:
            data = codec.loads(record.data)
        return cls(
            type=record.type,
            source=record.source,
            id=record.id,
            subject=record.subject,
            time=record.time,
            data=data,
            datacontenttype=record.datacontenttype,
            extensions=dict(record.extensions),
        )


def record_to_json(record: CloudEventRecord) -> str:
    """The JSON text stored in a history step for a received or sent event."""
    return codec.dumps({name: getattr(record, name) for name in _RECORD_FIELDS}
                       | {"extensions": dict(record.extensions)})


_RECORD_FIELDS = tuple(f.name for f in fields(CloudEventRecord) if f.name != "extensions")


def record_from_json(text: str) -> CloudEventRecord:
    """Inverse of ``record_to_json``."""
    raw = json.loads(text)
    raw["extensions"] = dict(raw.get("extensions") or {})
    return CloudEventRecord(**raw)


def decode_event_data(data: Any, model: type[M]) -> M:
    """Validate event data into ``model``; raise ``EventDataError`` naming invalid fields."""
    try:
        if isinstance(model, type) and issubclass(model, BaseModel):
            if isinstance(data, (bytes, str)):
                return model.model_validate_json(data)
            return model.model_validate(data)
        adapter: TypeAdapter[M] = TypeAdapter(model)
        if isinstance(data, (bytes, str)):
            return adapter.validate_json(data)
        return adapter.validate_python(data)
    except ValidationError as exc:
        name = getattr(model, "__name__", repr(model))
        raise EventDataError(
            f"event data does not fit {name}: {codec.summarise_validation(exc)}"
        ) from None
