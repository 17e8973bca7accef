"""A worker process of a pool: ``python pool_worker.py DATABASE WORKER_ID MARKER_FILE``.

Each activity start is appended to MARKER_FILE as ``<idempotency key> <worker id>``; the
activity takes a moment, so a worker killed at any time is likely to hold runs mid-step.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from kenning import App, WorkflowContext, activity, workflow
from kenning.runtime.worker import WorkerOptions

DATABASE, WORKER_ID, MARKER = sys.argv[1], sys.argv[2], Path(sys.argv[3])


@activity
async def slow_add(ctx: WorkflowContext, x: int) -> int:
    with MARKER.open("a") as f:
        f.write(f"{ctx.idempotency_key} {WORKER_ID}\n")
    await asyncio.sleep(0.2)
    return x + 1


@workflow
async def three_steps(ctx: WorkflowContext, x: int) -> int:
    for _ in range(3):
        x = await slow_add(ctx, x)
    return x


async def main() -> None:
    options = WorkerOptions(lease_seconds=1.0, poll_interval=0.1, max_runs=8)
    async with App(DATABASE, WORKER_ID, workflows=[three_steps], worker_options=options):
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
