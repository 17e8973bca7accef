"""A worker process for the lost-worker tests: ``python lost_worker.py DB WORKER_ID MARKER N``.

``killer`` runs an activity that SIGKILLs its own process (at most 2 attempts); ``poison``
SIGKILLs its process from workflow code, outside any activity; ``fine`` is a short run.
Every activity attempt appends ``run_id attempt`` to MARKER. ``N`` is ``max_recoveries``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from kenning import App, RetryPolicy, WorkflowContext, activity, workflow
from kenning.runtime.worker import WorkerOptions

MARKER = Path(sys.argv[3]) if len(sys.argv) > 3 else Path("marker")


def _mark(ctx: WorkflowContext) -> None:
    with MARKER.open("a") as f:
        f.write(f"{ctx.run_id} {ctx.attempt}\n")


@activity(retry=RetryPolicy(max_attempts=2, initial_interval=0.2))
async def kill_self(ctx: WorkflowContext) -> str:
    _mark(ctx)
    os.kill(os.getpid(), signal.SIGKILL)
    return "unreachable"


@activity
async def step(ctx: WorkflowContext, n: int) -> int:
    _mark(ctx)
    return n + 1


@workflow
async def killer(ctx: WorkflowContext) -> str:
    return await kill_self(ctx)


@workflow
async def poison(ctx: WorkflowContext) -> str:
    await step(ctx, 0)
    os.kill(os.getpid(), signal.SIGKILL)  # a crash in workflow code: no activity to blame
    return "unreachable"


@workflow
async def fine(ctx: WorkflowContext, n: int) -> int:
    return await step(ctx, await step(ctx, n))


async def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    options = WorkerOptions(lease_seconds=1.0, poll_interval=0.1,
                            max_recoveries=int(sys.argv[4]))
    async with App(sys.argv[1], sys.argv[2], workflows=[killer, poison, fine],
                   worker_options=options):
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
