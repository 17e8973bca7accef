"""Leases: renewed while an activity runs, so a second worker never takes a live run."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kenning import App, WorkflowContext, activity, workflow
from kenning.runtime.worker import WorkerOptions

runs_of_long_activity: list[str] = []


@activity
async def long_job(ctx: WorkflowContext) -> str:
    runs_of_long_activity.append(ctx.idempotency_key)
    await asyncio.sleep(1.5)
    return "done"


@workflow
async def holds_lease(ctx: WorkflowContext) -> str:
    return await long_job(ctx)


async def test_a_live_lease_is_renewed_and_not_taken_over(tmp_path: Path) -> None:
    db = str(tmp_path / "k.db")
    short = WorkerOptions(lease_seconds=0.4, poll_interval=0.05)
    async with App(db, "first", workflows=[holds_lease], worker_options=short) as first:
        run_id = await holds_lease.start(first)
        async with asyncio.timeout(5):
            while not runs_of_long_activity:
                await asyncio.sleep(0.01)
        async with App(db, "second", workflows=[holds_lease], worker_options=short) as second:
            assert await second.result(run_id, timeout=10) == "done"
            assert (await second.get_run(run_id)).status.value == "completed"
    assert runs_of_long_activity == [f"{run_id}:0"]
