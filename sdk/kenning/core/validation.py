"""Checks every input passes before it reaches the store, so a bad write fails alone.

A value that the database would refuse (a NUL byte, a lone surrogate, an id too long for
a NOTIFY payload) must never join a group commit: it is refused here with ``InvalidInput``
naming the field, before any I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from kenning.core.errors import InvalidEventInput, InvalidInput
from kenning.core.models import CHILD_FINISHED_TYPE, UPGRADE_POLICIES, CloudEventRecord, NewRun

# The same pattern as the WorkflowRun CRD's spec.runId: 1 to 200 characters, letters,
# digits and ``_ . : -``, starting and ending with a letter or digit.
RUN_ID_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_.:-]{0,198}[A-Za-z0-9])?$"
MAX_RUN_ID = 200
MAX_NAME = 253  # workflow, pool, namespace and label names
MAX_LABEL_VALUE = 1024
MAX_INPUT_BYTES = 2 * 1024 * 1024  # a run's JSON input
MAX_RESULT_BYTES = 2 * 1024 * 1024  # a workflow's or an activity's JSON result
MAX_EVENT_KEY_BYTES = 1024  # an event's id, source and type (indexed together)
MAX_EVENT_ATTRIBUTE = 8192  # the other attributes and extensions
MAX_EVENT_BYTES = 4 * 1024 * 1024  # a whole event as stored

_RUN_ID = re.compile(RUN_ID_PATTERN)


def check_text(field: str, value: object, *, max_chars: int | None = None,
               max_bytes: int | None = None, empty: bool = False,
               error: type[InvalidInput] = InvalidInput) -> str:
    """Return ``value`` if it is text the store can hold: no NUL, valid UTF-8, short enough."""
    if not isinstance(value, str):
        raise error(f"{field} must be text, not {type(value).__name__}", field=field)
    if not value and not empty:
        raise error(f"{field} must not be empty", field=field)
    if max_chars is not None and len(value) > max_chars:
        raise error(f"{field} is {len(value)} characters long; the limit is {max_chars}",
                    field=field)
    if "\x00" in value:
        raise error(f"{field} contains a NUL character, which the store cannot hold",
                    field=field)
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise error(f"{field} is not valid Unicode (a lone surrogate at position "
                    f"{exc.start}): encode it properly", field=field) from None
    if max_bytes is not None and size > max_bytes:
        raise error(f"{field} is {size} bytes long; the limit is {max_bytes}: store large "
                    f"data elsewhere and pass a reference", field=field)
    return value


def check_size(field: str, text: str, limit: int,
               error: type[InvalidInput] = InvalidInput) -> str:
    """Return ``text`` if its UTF-8 form fits ``limit`` bytes (checked for encoding too)."""
    return check_text(field, text, max_bytes=limit, empty=True, error=error)


def check_run_id(run_id: object, field: str = "run_id") -> str:
    """Return ``run_id`` if it fits the pattern of the WorkflowRun CRD's ``spec.runId``."""
    check_text(field, run_id, max_chars=MAX_RUN_ID)
    assert isinstance(run_id, str)
    if not _RUN_ID.match(run_id):
        raise InvalidInput(
            f"{field} {run_id[:60]!r} is not a valid run id: 1 to {MAX_RUN_ID} letters, digits "
            f"and '_.:-', starting and ending with a letter or digit", field=field)
    return run_id


def check_labels(labels: Mapping[str, str], field: str = "labels") -> None:
    """Check label names and values for the store."""
    for key, value in labels.items():
        check_text(f"{field} key", key, max_chars=MAX_NAME)
        check_text(f"{field}[{key}]", value, max_chars=MAX_LABEL_VALUE, empty=True)


def validate_new_run(new: NewRun, *, max_input: int = MAX_INPUT_BYTES) -> NewRun:
    """Return ``new`` if every field is fit for the store; ``InvalidInput`` naming the field."""
    check_run_id(new.run_id)
    check_text("namespace", new.namespace, max_chars=MAX_NAME)
    check_text("workflow", new.workflow, max_chars=MAX_NAME)
    check_size("input", new.input, max_input)
    if new.pool is not None:
        check_text("pool", new.pool, max_chars=MAX_NAME)
    if new.build_id is not None:
        check_text("build_id", new.build_id, max_chars=MAX_NAME)
    if new.upgrade not in UPGRADE_POLICIES:
        raise InvalidInput(f"upgrade must be one of {', '.join(UPGRADE_POLICIES)}, "
                           f"not {new.upgrade!r}")
    check_labels(new.labels)
    return new


def validate_event(record: CloudEventRecord, field: str = "event") -> CloudEventRecord:
    """Return ``record`` if its attributes and data are fit for the store."""
    bad = InvalidEventInput
    for name in ("id", "source", "type"):
        check_text(f"{field}.{name}", getattr(record, name), max_bytes=MAX_EVENT_KEY_BYTES,
                   error=bad)
    for name in ("specversion", "subject", "time", "datacontenttype", "dataschema"):
        value = getattr(record, name)
        if value is not None:
            check_text(f"{field}.{name}", value, max_chars=MAX_EVENT_ATTRIBUTE, empty=True,
                       error=bad)
    for key, value in record.extensions.items():
        check_text(f"{field} extension name", key, max_chars=MAX_NAME, error=bad)
        check_text(f"{field}.{key}", value, max_chars=MAX_EVENT_ATTRIBUTE, empty=True,
                   error=bad)
    if record.type == CHILD_FINISHED_TYPE:
        raise bad(f"{field}.type {CHILD_FINISHED_TYPE!r} is reserved: the store sends it when "
                  f"a child run ends", field=f"{field}.type")
    if record.target_run is not None and not _RUN_ID.match(record.target_run):
        raise bad(f"{field}.kenningrun {record.target_run[:60]!r} is not a valid run id",
                  field=f"{field}.kenningrun")
    for name in ("data", "data_base64"):
        value = getattr(record, name)
        if value is not None:
            check_size(f"{field}.{name}", value, MAX_EVENT_BYTES, error=bad)
    return record


def validate_events(namespace: str, events: Sequence[CloudEventRecord]) -> None:
    """Check a namespace and the events accepted into it."""
    check_text("namespace", namespace, max_chars=MAX_NAME, error=InvalidEventInput)
    for index, record in enumerate(events):
        validate_event(record, f"event[{index}]" if len(events) > 1 else "event")
