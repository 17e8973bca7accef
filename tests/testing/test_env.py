"""``kenning.testing.TestEnv``: timers and timeouts fire as soon as nothing else can happen."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from kenning import (
    EventTimeout,
    RetryPolicy,
    RunStatus,
    WorkflowContext,
    activity,
    send_event,
    sleep,
    wait_event,
    workflow,
)
from kenning.testing import TestEnv

ATTEMPTS: list[int] = []


@workflow(name="env_pay_or_expire")
async def pay_or_expire(ctx: WorkflowContext, order: str) -> str:
    """Waits five minutes for the payment."""
    try:
        event = await wait_event(ctx, "paid", timeout=timedelta(minutes=5),
                                 match={"data.order": order})
    except EventTimeout:
        return f"expired at {ctx.now().isoformat()}"
    return f"paid {event.data['amount']}"


@activity(retry=RetryPolicy(max_attempts=3, initial_interval=timedelta(minutes=10),
                            max_interval=timedelta(hours=1)))
async def flaky(ctx: WorkflowContext) -> int:
    """Fails twice, then works."""
    ATTEMPTS.append(ctx.attempt)
    if ctx.attempt < 3:
        raise RuntimeError("not yet")
    return ctx.attempt


@workflow(name="env_patient")
async def patient(ctx: WorkflowContext) -> dict[str, object]:
    """A day's sleep, then an activity retried after ten and twenty minutes."""
    start = ctx.now()
    await sleep(ctx, timedelta(days=1))
    attempts = await flaky(ctx)
    return {"attempts": attempts, "hours": (ctx.now() - start).total_seconds() / 3600}


@workflow(name="env_pinger")
async def pinger(ctx: WorkflowContext, target: str) -> None:
    """Sleeps ten minutes, then pings ``target``."""
    await sleep(ctx, timedelta(minutes=10))
    await send_event(ctx, "ping", {"from": ctx.run_id}, to_run=target)


@workflow(name="env_waits_for_ping")
async def waits_for_ping(ctx: WorkflowContext) -> str:
    """Waits an hour for a ping."""
    try:
        await wait_event(ctx, "ping", timeout=timedelta(hours=1))
    except EventTimeout:
        return "no ping"
    return "pinged"


@workflow(name="env_clock")
async def what_time(ctx: WorkflowContext) -> str:
    """Workflow time."""
    return ctx.now().isoformat()


async def test_a_five_minute_timeout_takes_milliseconds() -> None:
    async with TestEnv([pay_or_expire]) as env:
        began, real = env.now(), time.monotonic()
        run_id = await env.start(pay_or_expire, "A1")
        result = await env.result(run_id)
        assert result.startswith("expired at ")
        assert datetime.fromisoformat(result.removeprefix("expired at ")) >= began + \
            timedelta(minutes=5)
        assert env.now() - began >= timedelta(minutes=5)
    assert time.monotonic() - real < 5  # milliseconds unloaded; generous for a busy machine


async def test_an_event_sent_before_the_deadline_wins() -> None:
    async with TestEnv([pay_or_expire]) as env:
        began = env.now()
        run_id = await env.start(pay_or_expire, "A2")
        await env.wait_status(run_id, RunStatus.WAITING_FOR_EVENT)  # no time skipped to get here
        await env.publish("paid", {"order": "A2", "amount": 12})
        assert await env.result(run_id) == "paid 12"
        assert env.now() - began < timedelta(minutes=1)


async def test_sleeps_and_retry_delays_are_skipped() -> None:
    ATTEMPTS.clear()
    async with TestEnv([patient]) as env:
        real = time.monotonic()
        result = await env.result(await env.start(patient))
    assert result["attempts"] == 3 and ATTEMPTS == [1, 2, 3]
    assert result["hours"] == pytest.approx(24.5, abs=0.1)  # a day, then 10 + 20 minutes
    assert time.monotonic() - real < 10


async def test_what_one_run_sends_another_arrives_before_later_timers_fire() -> None:
    async with TestEnv([pinger, waits_for_ping]) as env:
        began = env.now()
        waiting = await env.start(waits_for_ping)
        await env.wait_status(waiting, RunStatus.WAITING_FOR_EVENT)
        await env.start(pinger, waiting)
        assert await env.result(waiting) == "pinged"
        assert timedelta(minutes=10) <= env.now() - began < timedelta(hours=1)


async def test_skip_moves_time_by_hand() -> None:
    async with TestEnv([pay_or_expire]) as env:
        run_id = await env.start(pay_or_expire, "A3")
        await env.wait_status(run_id, RunStatus.WAITING_FOR_EVENT)
        await env.skip(timedelta(minutes=4))
        assert (await env.get_run(run_id)).status is RunStatus.WAITING_FOR_EVENT
        await env.skip(timedelta(minutes=1))
        assert (await env.get_run(run_id)).status is RunStatus.COMPLETED


async def test_a_run_nothing_can_move_on_times_out_saying_why() -> None:
    async with TestEnv([waits_for_ping]) as env:
        run_id = await env.start(waits_for_ping)
        await env.wait_status(run_id, RunStatus.WAITING_FOR_EVENT)
        await env.cancel(run_id)
        with pytest.raises(TimeoutError, match=f"run {run_id} to be waiting_for_timer after "
                                               r"0\.3 s; it is cancelled"):
            await env.wait_status(run_id, RunStatus.WAITING_FOR_TIMER, timeout=0.3)


async def test_time_starts_where_the_test_says() -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    async with TestEnv([what_time], start_time=start) as env:
        moment = datetime.fromisoformat(await env.result(await env.start(what_time)))
    assert start <= moment < start + timedelta(minutes=1)


@workflow(name="env_race")
async def env_race(ctx: WorkflowContext) -> str:
    """An approval raced against an hour, and a child that sleeps a day."""
    approval = asyncio.ensure_future(wait_event(ctx, "env.approved"))
    hour = asyncio.ensure_future(sleep(ctx, timedelta(hours=1)))
    done, _ = await asyncio.wait([approval, hour], return_when=asyncio.FIRST_COMPLETED)
    (hour if approval in done else approval).cancel()
    slept = await env_sleeper.run_child(ctx)
    return f"{'approved' if approval in done else 'timed out'}, child {slept}"


@workflow(name="env_sleeper")
async def env_sleeper(ctx: WorkflowContext) -> str:
    await asyncio.sleep(86_400)  # asyncio.sleep is a durable timer in workflow code
    return "slept a day"


async def test_time_skips_over_races_and_children() -> None:
    async with TestEnv([env_race, env_sleeper]) as env:
        started = env.now()
        run_id = await env.start(env_race)
        assert await env.result(run_id) == "timed out, child slept a day"
        assert env.now() - started >= timedelta(hours=25)
