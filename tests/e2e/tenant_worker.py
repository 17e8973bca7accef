"""A worker process bounded by namespace, pool and build, for the tenancy tests.

``python tenant_worker.py DATABASE WORKER_ID --namespace NS --pool P --build-id B
[--code v1|v2] [--drain]``. Every activity returns the id of the worker that executed it,
so a test can tell from each run's result where each of its steps ran. ``--code`` picks
the body of ``upgrade_flow``: v2 takes different steps than v1.
"""

from __future__ import annotations

import argparse
import asyncio

from kenning import App, WorkflowContext, activity, wait_event, workflow
from kenning.runtime.worker import WorkerOptions

parser = argparse.ArgumentParser()
parser.add_argument("database")
parser.add_argument("worker_id")
parser.add_argument("--namespace", action="append", default=[])
parser.add_argument("--pool", default=None)
parser.add_argument("--build-id", default=None)
parser.add_argument("--code", default="v1")
parser.add_argument("--drain", action="store_true")
ARGS = parser.parse_args()


@activity
async def where(ctx: WorkflowContext, step: str) -> str:
    """The worker executing this step (slow enough to be killed in the middle of it)."""
    await asyncio.sleep(0.3)
    return ARGS.worker_id


@activity
async def where_v2(ctx: WorkflowContext, step: str) -> str:
    """The v2 code's step: another name, so v1 history does not fit v2 code."""
    return f"{ARGS.worker_id}:v2"


@workflow
async def tenant_flow(ctx: WorkflowContext) -> list[str]:
    """A step, a wait for ``tenancy.go``, another step."""
    first = await where(ctx, "first")
    await wait_event(ctx, "tenancy.go")
    return [first, await where(ctx, "second")]


@workflow(name="upgrade_flow")
async def upgrade_v1(ctx: WorkflowContext) -> list[str]:
    """The v1 body."""
    first = await where(ctx, "first")
    await wait_event(ctx, "upgrade.go")
    return [first, await where(ctx, "second")]


@workflow(name="upgrade_flow")
async def upgrade_v2(ctx: WorkflowContext) -> list[str]:
    """The v2 body: different steps."""
    first = await where_v2(ctx, "first")
    second = await where_v2(ctx, "second")
    await wait_event(ctx, "upgrade.go")
    return [first, second, await where_v2(ctx, "third")]


async def main() -> None:
    options = WorkerOptions(lease_seconds=1.0, poll_interval=0.1, max_runs=8)
    flows = [tenant_flow, upgrade_v1 if ARGS.code == "v1" else upgrade_v2]
    async with App(ARGS.database, ARGS.worker_id, workflows=flows, worker_options=options,
                   namespaces=ARGS.namespace or None, pool=ARGS.pool,
                   build_id=ARGS.build_id, drain=ARGS.drain):
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
