"""Durable steps a workflow awaits: ``wait_event``, ``sleep``, ``sleep_until``, ``send_event``."""

from __future__ import annotations

import base64
from collections.abc import Mapping
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
    TARGET_RUN_EXTENSION,
    CloudEventRecord,
    Step,
    StepKind,
    Wait,
    WaitKind,
)

SLEEP_STEP = "sleep"


def _execution(ctx: WorkflowContext, what: str) -> RunExecution:
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
    type: str,
    *,
    timeout: timedelta | float | None = None,
    match: Mapping[str, Any] | None = None,
    lookback: timedelta | float | None = None,
) -> ReceivedEvent:
    """Wait durably for a CloudEvent of ``type`` whose attributes satisfy ``match``.

    The run holds no process while it waits. Raises ``EventTimeout`` when ``timeout``
    (counted from workflow time, ``ctx.now()``, like ``sleep``) passes first. ``lookback``
    lets the wait consume a kept event that arrived that long before it began. Events
    addressed to this run (extension ``kenningrun``) are consumed whenever they arrived.
    """
    ex = _execution(ctx, "wait_event")
    if not isinstance(type, str) or not type:
        raise ConfigurationError("wait_event needs a non-empty event type")
    seq = ex.take_seq(f"wait_event('{type}')")
    step = ex.recorded(seq, (StepKind.EVENT, StepKind.TIMEOUT), type)
    if step is None:
        step = await _wait_live(ex, seq, type, timeout, match, lookback)
    if step.kind is StepKind.TIMEOUT:
        raise EventTimeout(f"run {ex.run.run_id}: no '{type}' event arrived before the timeout")
    assert step.value is not None
    return ReceivedEvent.from_record(record_from_json(step.value))


async def _wait_live(
    ex: RunExecution,
    seq: int,
    event_type: str,
    timeout: timedelta | float | None,
    match: Mapping[str, Any] | None,
    lookback: timedelta | float | None,
) -> Step:
    now = ex.clock()
    wait = ex.wait_at(seq, WaitKind.EVENT)
    if wait is not None and wait.wake_at is not None and wait.wake_at <= now:
        step = Step(seq, StepKind.TIMEOUT, event_type, None, now)
        ex.buffer(step)
        return step
    if wait is None:
        wait = Wait(
            seq=seq,
            kind=WaitKind.EVENT,
            # the deadline counts from workflow time, like sleep: replay-stable
            wake_at=(None if timeout is None
                     else ex.workflow_time + seconds_of(timeout, "wait_event timeout")),
            event_type=event_type,
            match=validate_match(match),
            lookback=None if lookback is None else seconds_of(lookback, "wait_event lookback"),
            started_at=now,
        )
    return await ex.begin_event_wait(wait)


async def sleep(ctx: WorkflowContext, duration: timedelta | float) -> None:
    """Sleep durably: the run is suspended and resumes on any worker when the time comes.

    The duration counts from workflow time, ``ctx.now()``: ``sleep(ctx, d)`` is
    ``sleep_until(ctx, ctx.now() + d)``. A run resumed late (its worker died) catches up
    instead of sleeping the whole duration again.
    """
    ex = _execution(ctx, "sleep")
    seconds = seconds_of(duration, "sleep duration")
    await _sleep_to(ex, lambda now: now + seconds, "sleep")


async def sleep_until(ctx: WorkflowContext, when: datetime) -> None:
    """Sleep durably until ``when`` (a timezone-aware datetime; naive means UTC)."""
    ex = _execution(ctx, "sleep_until")
    if not isinstance(when, datetime):
        raise ConfigurationError("sleep_until needs a datetime")
    target = (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()
    await _sleep_to(ex, lambda _now: target, "sleep_until")


async def _sleep_to(ex: RunExecution, due: Any, what: str) -> None:
    seq = ex.take_seq(what)
    if ex.recorded(seq, (StepKind.TIMER,), SLEEP_STEP) is not None:
        return
    now = ex.clock()
    wait = ex.wait_at(seq, WaitKind.TIMER)
    # durations count from workflow time (ctx.now(): the latest recorded step, or the run's
    # creation), so the due time is the same on every replay and a run that queued before
    # a worker took it does not sleep longer for it
    wake_at = (wait.wake_at if wait is not None and wait.wake_at is not None
               else due(ex.workflow_time))
    if wake_at <= now:
        ex.buffer(Step(seq, StepKind.TIMER, SLEEP_STEP, None, now))
        return
    await ex.suspend(Wait(seq=seq, kind=WaitKind.TIMER, wake_at=wake_at))


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
    ex = _execution(ctx, "send_event")
    seq = ex.take_seq(f"send_event('{type}')")
    step = ex.recorded(seq, (StepKind.SEND,), type)
    if step is not None:
        assert step.value is not None
        return record_from_json(step.value).id
    record = build_outgoing(ctx, type, data, source, subject, to_run, extensions)
    step = Step(seq, StepKind.SEND, type, record_to_json(record), ex.clock())
    await ex.commit(step, outbox=[record])
    return record.id


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
