"""wait_event on several types: the first matching event of any of them."""

from __future__ import annotations

import pytest

from kenning import (
    ConfigurationError,
    EventTimeout,
    RunStatus,
    WorkflowContext,
    wait_event,
    workflow,
)
from tests.conftest import wait_status

from .conftest import AppFactory


@workflow
async def payment_outcome(ctx: WorkflowContext, order: str) -> str:
    try:
        event = await wait_event(ctx, ["payment.completed", "payment.failed"],
                                 match={"data.order": order}, timeout=30)
    except EventTimeout:
        return "no answer"
    return event.type


async def test_the_first_event_of_any_listed_type_is_taken(make_app: AppFactory) -> None:
    async with make_app([payment_outcome]) as app:
        ok, failed = await app.start(payment_outcome, "A"), await app.start(payment_outcome, "B")
        for run_id in (ok, failed):
            await wait_status(app, run_id, RunStatus.WAITING_FOR_EVENT)
        info = await app.get_run(failed)
        assert info.waiting_for[0].event_types == ("payment.completed", "payment.failed")
        await app.publish("payment.failed", {"order": "B"})
        await app.publish("payment.completed", {"order": "A"})
        assert await app.result(failed, timeout=10) == "payment.failed"
        assert await app.result(ok, timeout=10) == "payment.completed"


async def test_a_first_of_wait_times_out(make_app: AppFactory) -> None:
    @workflow(name="short_first_of")
    async def short(ctx: WorkflowContext) -> str:
        try:
            await wait_event(ctx, ["a.done", "b.done"], timeout=0.2)
        except EventTimeout as exc:
            return str(exc)
        return "event"

    async with make_app([short]) as app:
        assert "a.done|b.done" in await app.result(await app.start(short), timeout=10)


@pytest.mark.parametrize("types", [[], ["ok", ""], ["a|b"], ["x", "x"]])
async def test_bad_type_lists_fail_the_run_clearly(make_app: AppFactory,
                                                   types: list[str]) -> None:
    @workflow(name="bad_types")
    async def bad(ctx: WorkflowContext) -> None:
        await wait_event(ctx, types)

    async with make_app([bad]) as app:
        info = await app.wait_finished(await app.start(bad), timeout=10)
    assert info.status is RunStatus.FAILED and "wait_event" in (info.error or "")
    assert ConfigurationError.__name__ in (info.error or "")
