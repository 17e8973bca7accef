"""Durable steps a workflow awaits: ``wait_event``, ``sleep``, ``sleep_until``, ``send_event``."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from kenning.core import codec
from kenning.core.context import WorkflowContext, current_activity
from kenning.core.definitions import seconds_of
from kenning.core.errors import ConfigurationError, EventTimeout, StepInActivityError
from kenning.core.events import ReceivedEvent, record_from_json, record_to_json
from kenning.core.execution import RunExecution
from kenning.core.matching import validate_match
from kenning.core.models import (
    EVENT_TYPES_SEPARATOR,
    TARGET_RUN_EXTENSION,
    CloudEventRecord,
    Step,
    StepKind,
    Wait,
    WaitKind,
)
from kenning.core.slots import SlotState


def step_execution(ctx: WorkflowContext, what: str) -> RunExecution:
    """The execution behind ``ctx``; misuse (no ctx, a step inside an activity) raises."""
    if not isinstance(ctx, WorkflowContext):
        raise ConfigurationError(f"{what} needs the workflow's ctx as its first argument")
    ex = ctx._execution
    if ctx.in_activity:
        outer = current_activity.get()
        ex.fail_with(StepInActivityError(
            f"run {ctx.run_id}: {f'activity {outer!r}' if outer else 'an activity'} called "
            f"{what}; only workflow code may call steps"))
        assert ex.fatal is not None
        raise ex.fatal
    return ex


async def wait_event(
    ctx: WorkflowContext,
    type: str | Sequence[str],
    *,
    timeout: timedelta | float | None = None,
    match: Mapping[str, Any] | None = None,
    lookback: timedelta | float | None = None,
) -> ReceivedEvent:
    """Wait durably for a CloudEvent of ``type`` whose attributes satisfy ``match``.

    ``type`` may be a list of types: the first matching event of any of them is returned
    (``event.type`` says which). The run holds no process while it waits. Raises
    ``EventTimeout`` when ``timeout`` (counted from workflow time, ``ctx.now()``, like
    ``sleep``) passes first. ``lookback`` lets the wait consume a kept event that arrived
    that long before it began. Events addressed to this run (extension ``kenningrun``) are
    consumed whenever they arrived.
    """
    ex = step_execution(ctx, "wait_event")
    types = _event_types(type)
    name = EVENT_TYPES_SEPARATOR.join(types)
    seq = ex.take_seq(f"wait_event('{name}')")
    recorded = ex.recorded(seq, (StepKind.EVENT, StepKind.TIMEOUT), name)
    wait = None
    if recorded is None:
        wait = ex.stored_wait(seq, WaitKind.EVENT) or Wait(
            seq=seq,
            kind=WaitKind.EVENT,
            # the deadline counts from workflow time, like sleep: replay-stable
            wake_at=(None if timeout is None
                     else ex.workflow_time + seconds_of(timeout, "wait_event timeout")),
            event_type=types[0],
            other_types=types[1:],
            match=validate_match(match),
            lookback=None if lookback is None else seconds_of(lookback, "wait_event lookback"),
            started_at=ex.clock(),
        )
    _slot, future = ex.future_slot(seq, StepKind.EVENT, name, recorded, wait=wait)
    step = await future
    if step.kind is StepKind.TIMEOUT:
        raise EventTimeout(f"run {ex.run.run_id}: no '{name}' event arrived before the timeout")
    assert step.value is not None
    return ReceivedEvent.from_record(record_from_json(step.value))


def _event_types(value: str | Sequence[str]) -> tuple[str, ...]:
    types = (value,) if isinstance(value, str) else tuple(value)
    if not types or not all(isinstance(t, str) and t for t in types):
        raise ConfigurationError("wait_event needs a non-empty event type or a list of them")
    if any(EVENT_TYPES_SEPARATOR in t for t in types):
        raise ConfigurationError(
            f"wait_event: an event type may not contain '{EVENT_TYPES_SEPARATOR}' "
            f"(it joins the types of a first-of-several wait): {types!r}")
    if len(set(types)) != len(types):
        raise ConfigurationError(f"wait_event: an event type is listed twice: {types!r}")
    return types


async def sleep(ctx: WorkflowContext, duration: timedelta | float) -> None:
    """Sleep durably: the run is suspended and resumes on any worker when the time comes.

    The duration counts from workflow time, ``ctx.now()``: ``sleep(ctx, d)`` is
    ``sleep_until(ctx, ctx.now() + d)``. A run resumed late (its worker died) catches up
    instead of sleeping the whole duration again. Inside a workflow ``asyncio.sleep`` is
    durable too (workflow code runs on a loop whose timers are steps).
    """
    ex = step_execution(ctx, "sleep")
    seconds = seconds_of(duration, "sleep duration")
    await _sleep_to(ex, ex.workflow_time + seconds)


async def sleep_until(ctx: WorkflowContext, when: datetime) -> None:
    """Sleep durably until ``when`` (a timezone-aware datetime; naive means UTC)."""
    ex = step_execution(ctx, "sleep_until")
    if not isinstance(when, datetime):
        raise ConfigurationError("sleep_until needs a datetime")
    await _sleep_to(ex, (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp())


async def _sleep_to(ex: RunExecution, due: float) -> None:
    future: asyncio.Future[None] = ex.loop.create_future()
    handle = ex.loop.call_at(due, _set_unless_done, future)
    try:
        await future
    except asyncio.CancelledError:
        handle.cancel()
        raise


def _set_unless_done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


async def send_event(
    ctx: WorkflowContext,
    type: str,
    data: Any = None,
    *,
    source: str | None = None,
    subject: str | None = None,
    to_run: str | None = None,
    extensions: Mapping[str, str] | None = None,
) -> str:
    """Emit a CloudEvent, published if and only if this step commits (transactional outbox).

    It goes to the worker's configured target (``$K_SINK``; embedded: the app's own router).
    ``to_run`` addresses it to one run (extension ``kenningrun``). Returns the event id,
    stable across replays.
    """
    ex = step_execution(ctx, "send_event")
    seq = ex.take_seq(f"send_event('{type}')")
    recorded = ex.recorded(seq, (StepKind.SEND,), type)
    slot, future = ex.future_slot(seq, StepKind.SEND, type, recorded,
                                  state=SlotState.READY)
    if recorded is None:
        record = build_outgoing(ctx, type, data, source, subject, to_run, extensions)
        ex.ready(slot, Step(seq, StepKind.SEND, type, record_to_json(record), ex.clock()),
                 outbox=[record])
    step = await future
    assert step.value is not None
    return record_from_json(step.value).id


def build_outgoing(
    ctx: WorkflowContext,
    type: str,
    data: Any,
    source: str | None,
    subject: str | None,
    to_run: str | None,
    extensions: Mapping[str, str] | None,
) -> CloudEventRecord:
    """The CloudEvent a workflow emits, with a replay-stable id."""
    ext = {k: str(v) for k, v in (extensions or {}).items()}
    if to_run is not None:
        ext[TARGET_RUN_EXTENSION] = to_run
    payload: str | None = None
    payload_b64: str | None = None
    if isinstance(data, bytes):
        payload_b64, ctype = base64.b64encode(data).decode(), "application/octet-stream"
    else:
        payload, ctype = codec.dumps(codec.to_jsonable(data)), "application/json"
    return CloudEventRecord(
        id=str(ctx.uuid()),
        source=source or f"/kenning/{ctx.namespace}/runs/{ctx.run_id}",
        type=type,
        subject=subject,
        time=ctx.now().isoformat().replace("+00:00", "Z"),
        datacontenttype=ctype,
        data=payload,
        data_base64=payload_b64,
        extensions=ext,
    )
