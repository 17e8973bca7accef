"""The workflow module the entry-point test serves with ``kenning worker --module``."""

from __future__ import annotations

from kenning import WorkflowContext, activity, workflow


@activity
async def image_smoke_greet(ctx: WorkflowContext, name: str) -> str:
    """A side effect the worker must run."""
    return f"hello {name}"


@workflow(name="image_smoke")
async def image_smoke(ctx: WorkflowContext, name: str) -> dict[str, str]:
    """One activity, then done."""
    return {"greeting": await image_smoke_greet(ctx, name)}
