"""The worker's purge loop deletes finished runs past their retention, and only those."""

from __future__ import annotations

import asyncio

from kenning import RunStatus, WorkflowContext, activity, workflow
from kenning.runtime.worker import WorkerOptions
from tests.conftest import FakeClock

from .conftest import AppFactory

DAY = 86_400.0


@activity
async def double(ctx: WorkflowContext, n: int) -> int:
    """One recorded step."""
    return 2 * n


@workflow
async def quick(ctx: WorkflowContext, n: int) -> int:
    """Finishes after one step."""
    return await double(ctx, n)


async def test_worker_purges_finished_runs_after_retention(make_app: AppFactory) -> None:
    clock = FakeClock()
    options = WorkerOptions(poll_interval=0.05, lease_seconds=5.0, purge_interval=0.05)
    async with make_app([quick, double], worker_options=options, clock=clock,
                        namespaces=["default", "keep"]) as app:
        ids = await app.start_many(quick, [1, 2, 3])
        assert [await app.result(i, timeout=10) for i in ids] == [2, 4, 6]
        await app.store.set_finished_retention("keep", 0)
        kept = await app.start(quick, 4, namespace="keep")
        await app.result(kept, timeout=10)
        waiting = await app.start("not-served-here", namespace="default")
        await asyncio.sleep(0.3)
        assert len(await app.list_runs(limit=10, namespace="default")) == 4  # within 30 days
        clock.advance(31 * DAY)
        async with asyncio.timeout(10):
            while len(await app.list_runs(namespace="default", limit=10)) > 1:
                await asyncio.sleep(0.05)
        [left] = await app.list_runs(namespace="default")
        assert (left.run_id, left.status) == (waiting, RunStatus.PENDING)
        assert (await app.get_run(kept)).status is RunStatus.COMPLETED  # 0 keeps forever
        assert await app.history(kept)
