"""A worker lost during an activity attempt: the attempt counts, the error is catchable.

The lost worker is played by a claim under another worker id that records an attempt as
started and is never heard of again; its lease then runs out on the test's fake clock.
"""

from __future__ import annotations

from typing import Any

from kenning import ActivityError, RetryPolicy, RunStatus, WorkflowContext, activity, workflow
from kenning.runtime.worker import WorkerOptions
from tests.conftest import wait_status
from tests.engine.conftest import AppFactory

SEEN: list[int] = []


@activity(retry=RetryPolicy(max_attempts=3, initial_interval=1.0))
async def charge(ctx: WorkflowContext) -> int:
    SEEN.append(ctx.attempt)
    return ctx.attempt


@activity(retry=RetryPolicy(max_attempts=1))
async def once(ctx: WorkflowContext) -> str:
    SEEN.append(ctx.attempt)
    return "ran"


@workflow
async def pays(ctx: WorkflowContext) -> int:
    return await charge(ctx)


@workflow
async def tolerant(ctx: WorkflowContext) -> str:
    try:
        return await once(ctx)
    except ActivityError as exc:
        return f"caught: {exc.error_type}: {exc.message} ({exc.attempts})"


@workflow
async def spins(ctx: WorkflowContext) -> str:
    return "never claimed while poisoned"


async def _lose_worker_during(app: Any, run_id: str, attempt: int, clock: Any) -> None:
    [ghost] = await app.store.claim_runs("ghost", limit=1, lease_seconds=5, run_ids=[run_id])
    await app.store.record_attempts(ghost.lease, {0: attempt})
    clock.advance(6)  # the ghost's lease expires


async def test_lost_attempt_counts_and_the_next_says_so(make_app: AppFactory,
                                                        fake_clock: Any) -> None:
    SEEN.clear()
    async with make_app([pays], worker=False, clock=fake_clock) as client:
        run_id = await client.start(pays)
        await _lose_worker_during(client, run_id, 1, fake_clock)
    async with make_app([pays], clock=fake_clock) as app:
        await wait_status(app, run_id, RunStatus.WAITING_FOR_TIMER, timeout=10)
        info = await app.get_run(run_id)
        assert info.waiting_for and info.waiting_for[0].kind == "retry"
        assert SEEN == [], "the lost attempt is not run again at once: it failed"
        fake_clock.advance(1)
        app.worker._wakeup.set()  # type: ignore[union-attr]  # the fake clock moved, not time
        assert await app.result(run_id, timeout=10) == 2
    assert SEEN == [2], "ctx.attempt is the true number after a lost worker"


async def test_spent_attempts_raise_a_catchable_activity_error(make_app: AppFactory,
                                                               fake_clock: Any) -> None:
    SEEN.clear()
    async with make_app([tolerant], worker=False, clock=fake_clock) as client:
        run_id = await client.start(tolerant)
        await _lose_worker_during(client, run_id, 1, fake_clock)
    async with make_app([tolerant], clock=fake_clock) as app:
        result = await app.result(run_id, timeout=10)
    assert result == ("caught: WorkerLost: the worker was lost during attempt 1 of 1 (killed, "
                      "crashed or hung while the activity ran) (1)")
    assert SEEN == []


async def test_poison_run_fails_after_max_recoveries(make_app: AppFactory,
                                                     fake_clock: Any) -> None:
    async with make_app([spins], worker=False, clock=fake_clock) as client:
        run_id = await client.start(spins)
        for owner in ("lost-1", "lost-2", "lost-3"):  # three workers lost in a row
            await client.store.claim_runs(owner, limit=1, lease_seconds=5, run_ids=[run_id])
            fake_clock.advance(6)
    options = WorkerOptions(poll_interval=0.05, lease_seconds=5.0, max_recoveries=2)
    async with make_app([spins], clock=fake_clock, worker_options=options) as app:
        await wait_status(app, run_id, RunStatus.FAILED, timeout=10)
        info = await app.get_run(run_id)
    assert info.error is not None and info.error.startswith("WorkerLost: run ")
    assert "its worker was lost 3 times in a row" in info.error
    assert "failed after 2 recovery attempts (max_recoveries=2)" in info.error
