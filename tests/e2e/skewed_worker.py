"""A worker whose wall clock is wrong: ``python skewed_worker.py DSN WORKER_ID SKEW_SECONDS``.

``time.time`` is moved by SKEW_SECONDS before Kenning is imported, as on a machine whose
clock runs ahead (positive) or behind (negative).
"""

from __future__ import annotations

import sys
import time

_real_time = time.time
_skew = float(sys.argv[3])
time.time = lambda: _real_time() + _skew

import asyncio  # noqa: E402

from kenning import App, WorkflowContext, sleep, workflow  # noqa: E402
from kenning.runtime.worker import WorkerOptions  # noqa: E402


@workflow
async def naps(ctx: WorkflowContext, seconds: float) -> str:
    await sleep(ctx, seconds)
    return f"slept {seconds}"


async def main() -> None:
    options = WorkerOptions(poll_interval=0.1)
    async with App(sys.argv[1], sys.argv[2], workflows=[naps], worker_options=options):
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
