"""A worker process for the crash tests: ``python crash_worker.py DB WORKER_ID MARKER``.

Its activity appends a line to MARKER each time it starts; the first attempt then hangs,
so the test can kill the process in the middle of it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from kenning import App, WorkflowContext, activity, workflow
from kenning.runtime.worker import WorkerOptions

MARKER = Path(sys.argv[3]) if len(sys.argv) > 3 else Path("marker")


@activity
async def charge(ctx: WorkflowContext, amount: int) -> str:
    with MARKER.open("a") as f:
        f.write(f"{ctx.idempotency_key}\n")
    if len(MARKER.read_text().splitlines()) == 1:
        await asyncio.sleep(3600)  # the first attempt is killed here
    return f"charged {amount}"


@activity
async def ship(ctx: WorkflowContext, what: str) -> str:
    return f"shipped after {what}"


@workflow
async def order(ctx: WorkflowContext, amount: int) -> list[str]:
    charged = await charge(ctx, amount)
    shipped = await ship(ctx, charged)
    return [charged, shipped]


async def main() -> None:
    options = WorkerOptions(lease_seconds=1.0, poll_interval=0.1)
    async with App(sys.argv[1], sys.argv[2], workflows=[order], worker_options=options):
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
