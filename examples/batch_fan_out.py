"""Fan-out with child workflows: a batch starts one child run per item and gathers them.

Each item is its own run (``<batch id>-<step>``), retried, suspended and resumed on its
own; the batch waits for all of them without holding a process, and one failed item does
not lose the others' results. Cancelling the batch cancels the items still running. Try it
with ``kenning dev examples/batch_fan_out.py`` and
``kenning start batch_workflow --input '["A-1", "A-2", "BAD-3"]'``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from kenning import ChildWorkflowError, WorkflowContext, activity, workflow


@activity
async def process_item(ctx: WorkflowContext, item: str) -> str:
    """Process one item in the item service (items named BAD-... are refused)."""
    if item.startswith("BAD"):
        raise ValueError(f"item {item} is refused")
    return f"processed {item}"


@workflow
async def item_workflow(ctx: WorkflowContext, item: str) -> str:
    """One item of a batch, a run of its own."""
    return await process_item(ctx, item)


@workflow
async def batch_workflow(ctx: WorkflowContext, items: list[str]) -> dict[str, Any]:
    """Start a child run per item, then gather every outcome."""
    handles = [await item_workflow.start_child(ctx, item) for item in items]
    outcomes = await asyncio.gather(*(h.result() for h in handles), return_exceptions=True)
    done = {item: out for item, out in zip(items, outcomes, strict=True)
            if not isinstance(out, BaseException)}
    failed = {item: str(out) for item, out in zip(items, outcomes, strict=True)
              if isinstance(out, ChildWorkflowError)}
    return {"done": done, "failed": failed, "children": [h.run_id for h in handles]}
