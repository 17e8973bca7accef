"""A worker process for the programming-model crash tests:
``python model_worker.py DATABASE WORKER_ID MARKER``.

Each workflow reaches a ``hang_once`` activity whose first attempt records its key in MARKER
and hangs, so the test can SIGKILL the process there; a fresh process then replays the
history recorded so far (concurrent branches, races, children, chapters) and finishes.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from kenning import (
    App,
    WorkflowContext,
    activity,
    continue_as_new,
    sleep,
    wait_event,
    workflow,
)
from kenning.runtime.worker import WorkerOptions

MARKER = Path(sys.argv[3]) if len(sys.argv) > 3 else Path("marker")


@activity
async def work(ctx: WorkflowContext, name: str, delay: float = 0.0) -> str:
    await asyncio.sleep(delay)
    return name


@activity
async def hang_once(ctx: WorkflowContext, key: str) -> str:
    seen = MARKER.read_text().splitlines() if MARKER.exists() else []
    with MARKER.open("a") as f:
        f.write(f"{key}\n")
    if key not in seen:
        await asyncio.sleep(3600)  # the first attempt is killed here
    return key


async def _branch(ctx: WorkflowContext, name: str, delay: float, hang: bool) -> list[str]:
    first = await work(ctx, f"{name}1", delay)
    second = await (hang_once(ctx, f"{name}2") if hang else work(ctx, f"{name}2"))
    return [first, second]


@workflow
async def model_fan_out(ctx: WorkflowContext) -> list[list[str]]:
    # a's first step is slow: b's steps complete first, out of issue order
    return list(await asyncio.gather(_branch(ctx, "a", 0.3, True), _branch(ctx, "b", 0, False)))


@workflow
async def model_race(ctx: WorkflowContext) -> str:
    timer = asyncio.ensure_future(sleep(ctx, 0.3))
    event = asyncio.ensure_future(wait_event(ctx, "model.never"))
    done, _ = await asyncio.wait([timer, event], return_when=asyncio.FIRST_COMPLETED)
    event.cancel()
    winner = "timer" if timer in done else "event"
    return await hang_once(ctx, f"race-{winner}")


@workflow
async def model_child(ctx: WorkflowContext, n: int) -> int:
    await work(ctx, f"child{n}")
    return n * 10


@workflow
async def model_parent(ctx: WorkflowContext) -> list[int]:
    handles = [await model_child.start_child(ctx, n) for n in (1, 2)]
    results = list(await asyncio.gather(*(h.result() for h in handles)))
    await hang_once(ctx, "parent")
    return results


@workflow
async def model_loop(ctx: WorkflowContext, n: int) -> int:
    await work(ctx, f"loop{n}")
    if n == 1:
        await hang_once(ctx, "loop")
    if n < 3:
        continue_as_new(ctx, n + 1)
    return n


@workflow
async def model_first_of(ctx: WorkflowContext) -> str:
    event = await wait_event(ctx, ["model.ok", "model.failed"], match={"data.id": "x"},
                             timeout=60)
    return await hang_once(ctx, f"first-{event.type}")


WORKFLOWS = [model_fan_out, model_race, model_child, model_parent, model_loop, model_first_of]


async def main() -> None:
    options = WorkerOptions(lease_seconds=1.0, poll_interval=0.1)
    async with App(sys.argv[1], sys.argv[2], workflows=WORKFLOWS, worker_options=options):
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
