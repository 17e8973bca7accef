"""Event delivery rules of DESIGN.md, each with its test, through the embedded App."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from kenning import (
    EventDataError,
    EventTimeout,
    RunStatus,
    WorkflowContext,
    decode_event_data,
    wait_event,
    workflow,
)
from kenning.core.models import AcceptOutcome, StepKind
from tests.conftest import wait_status

from .conftest import AppFactory


class Paid(BaseModel):
    order_id: str
    amount: float


@workflow
async def wait_paid(ctx: WorkflowContext, order_id: str) -> dict[str, Any]:
    event = await wait_event(ctx, "payment.completed", match={"data.order_id": order_id})
    paid = decode_event_data(event.data, Paid)
    return {"order": paid.order_id, "amount": paid.amount, "event": event.id}


async def test_match_routes_to_every_matching_run_only(make_app: AppFactory) -> None:
    async with make_app([wait_paid]) as app:
        a1 = await wait_paid.start(app, "A")
        a2 = await wait_paid.start(app, "A")
        b = await wait_paid.start(app, "B")
        for run_id in (a1, a2, b):
            await wait_status(app, run_id, RunStatus.WAITING_FOR_EVENT)
        info = await app.get_run(b)
        assert len(info.waiting_for) == 1
        assert info.waiting_for[0].event_type == "payment.completed"
        assert info.waiting_for[0].match == {"data.order_id": "B"}

        accepted = await app.publish("payment.completed", {"order_id": "A", "amount": 5},
                                     id="e1", source="/pay")
        assert sorted(accepted.resumed_runs) == sorted([a1, a2])
        assert await app.result(a1, timeout=5) == {"order": "A", "amount": 5.0, "event": "e1"}
        assert await app.result(a2, timeout=5) == {"order": "A", "amount": 5.0, "event": "e1"}
        assert (await app.get_run(b)).status is RunStatus.WAITING_FOR_EVENT


async def test_duplicate_event_changes_nothing(make_app: AppFactory) -> None:
    async with make_app([wait_paid]) as app:
        first = await wait_paid.start(app, "A")
        await wait_status(app, first, RunStatus.WAITING_FOR_EVENT)
        await app.publish("payment.completed", {"order_id": "A", "amount": 1}, id="x", source="/s")
        await app.result(first, timeout=5)
        second = await wait_paid.start(app, "A")
        await wait_status(app, second, RunStatus.WAITING_FOR_EVENT)
        again = await app.publish("payment.completed", {"order_id": "A", "amount": 1},
                                  id="x", source="/s")
        assert again.outcome is AcceptOutcome.DUPLICATE and again.resumed_runs == ()
        await asyncio.sleep(0.1)
        assert (await app.get_run(second)).status is RunStatus.WAITING_FOR_EVENT
        assert await app.store.count_events() == 1


@workflow
async def two_steps(ctx: WorkflowContext) -> list[Any]:
    await wait_event(ctx, "go")  # the addressed "step" event arrives before this wait ends
    second = await wait_event(ctx, "step")
    return [second.data]


async def test_addressed_event_waits_in_the_inbox(make_app: AppFactory) -> None:
    async with make_app([two_steps]) as app:
        run_id = await two_steps.start(app, run_id="inbox-run")
        await wait_status(app, run_id, RunStatus.WAITING_FOR_EVENT)
        early = await app.publish("step", {"n": 1}, to_run=run_id)
        assert early.resumed_runs == ()  # kept: the run waits for "go", not "step"
        other = await app.publish("step", {"n": 2}, to_run="another-run")
        assert other.resumed_runs == ()
        await app.publish("go", None, to_run=run_id)
        assert await app.result(run_id, timeout=5) == [{"n": 1}]


@workflow
async def wait_with_lookback(ctx: WorkflowContext, seconds: float) -> Any:
    event = await wait_event(ctx, "config.changed", lookback=timedelta(seconds=seconds))
    return event.data


async def test_lookback_consumes_a_kept_event(make_app: AppFactory, fake_clock: Any) -> None:
    async with make_app([wait_with_lookback], clock=fake_clock) as app:
        await app.publish("config.changed", {"v": 1})
        fake_clock.advance(30)
        within = await wait_with_lookback.start(app, 60.0)
        assert await app.result(within, timeout=5) == {"v": 1}
        outside = await wait_with_lookback.start(app, 10.0)
        await wait_status(app, outside, RunStatus.WAITING_FOR_EVENT)


@workflow
async def with_timeout(ctx: WorkflowContext) -> str:
    try:
        await wait_event(ctx, "never", timeout=timedelta(seconds=60))
    except EventTimeout:
        return "timed out"
    return "got it"


async def test_timeout_raises_event_timeout_and_late_events_are_ignored(
    make_app: AppFactory, fake_clock: Any
) -> None:
    async with make_app([with_timeout], clock=fake_clock) as app:
        run_id = await with_timeout.start(app)
        await wait_status(app, run_id, RunStatus.WAITING_FOR_EVENT)
        info = await app.get_run(run_id)
        assert info.waiting_for and info.waiting_for[0].wake_at is not None
        fake_clock.advance(61)
        app.worker._wakeup.set()  # type: ignore[union-attr]  # the fake clock moved, not time
        assert await app.result(run_id, timeout=5) == "timed out"
        late = await app.publish("never", {}, to_run=run_id)
        assert late.resumed_runs == ()
        history = await app.history(run_id)
        assert [s.kind for s in history] == [StepKind.TIMEOUT]


@workflow
async def consume_twice(ctx: WorkflowContext) -> list[str]:
    first = await wait_event(ctx, "tick", lookback=3600)
    second = await wait_event(ctx, "tick", lookback=3600)
    return [first.id, second.id]


async def test_a_run_consumes_an_event_at_most_once(make_app: AppFactory) -> None:
    async with make_app([consume_twice]) as app:
        await app.publish("tick", 1, id="t1")
        run_id = await consume_twice.start(app)
        await wait_status(app, run_id, RunStatus.WAITING_FOR_EVENT)
        await app.publish("tick", 2, id="t2")
        assert await app.result(run_id, timeout=5) == ["t1", "t2"]


async def test_namespaces_are_isolated(make_app: AppFactory) -> None:
    async with make_app([wait_paid], namespaces=["prod", "dev"]) as app:
        prod = await app.start(wait_paid, "A", namespace="prod")
        dev = await app.start(wait_paid, "A", namespace="dev")
        for run_id in (prod, dev):
            await wait_status(app, run_id, RunStatus.WAITING_FOR_EVENT)
        result = await app.publish("payment.completed", {"order_id": "A", "amount": 2},
                                   namespace="prod")
        assert result.resumed_runs == (prod,)
        await app.result(prod, timeout=5)
        assert (await app.get_run(dev)).status is RunStatus.WAITING_FOR_EVENT


@workflow
async def strict_data(ctx: WorkflowContext) -> str:
    event = await wait_event(ctx, "payment.completed")
    try:
        decode_event_data(event.data, Paid)
    except EventDataError as exc:
        return str(exc)
    return "valid"


async def test_invalid_event_data_names_the_fields(make_app: AppFactory) -> None:
    async with make_app([strict_data]) as app:
        run_id = await strict_data.start(app)
        await wait_status(app, run_id, RunStatus.WAITING_FOR_EVENT)
        await app.publish("payment.completed", {"order_id": 5})
        message = await app.result(run_id, timeout=5)
        assert "order_id" in message and "amount" in message and "Paid" in message


def test_bad_match_keys_are_rejected() -> None:
    from kenning import ConfigurationError
    from kenning.core.matching import validate_match

    assert validate_match({"data.order_id": "A", "subject": "s", "myext": "1"}) is not None
    with pytest.raises(ConfigurationError, match=r"'subject\.x'"):
        validate_match({"subject.x": 1})
    with pytest.raises(ConfigurationError, match="'Not-An-Ext'"):
        validate_match({"Not-An-Ext": 1})
