"""continue_as_new: a run that loops keeps a bounded history, chapters kept."""

from __future__ import annotations

from kenning import WorkflowContext, activity, continue_as_new, sleep, workflow
from kenning.core.models import StepKind

from .conftest import AppFactory


@activity
async def tick(ctx: WorkflowContext, n: int) -> int:
    return n


@workflow
async def subscription(ctx: WorkflowContext, n: int, total: int = 0) -> int:
    await tick(ctx, n)
    await sleep(ctx, 0.01)
    if n < 4:
        continue_as_new(ctx, n + 1, total=total + n)
    return total + n


async def test_each_chapter_starts_afresh_under_the_same_id(make_app: AppFactory) -> None:
    async with make_app([subscription]) as app:
        run_id = await app.start(subscription, 1, run_id="sub")
        assert await app.result(run_id, timeout=20) == 10
        chapters = await app.chapters(run_id)
        current = await app.history(run_id)
        first = await app.history(run_id, chapter=0)
        run = await app.store.get_run(run_id)
    assert [c.chapter for c in chapters] == [0, 1, 2]
    assert '[1]' in chapters[0].input and '[3]' in chapters[2].input
    assert [s.kind for s in current] == [StepKind.ACTIVITY, StepKind.TIMER]
    assert [s.kind for s in first] == [StepKind.ACTIVITY, StepKind.TIMER]
    assert run is not None and run.chapter == 3


@workflow
async def bad_continue(ctx: WorkflowContext, n: int) -> None:
    continue_as_new(ctx, "not a number")  # type: ignore[arg-type]


async def test_continue_as_new_checks_its_arguments(make_app: AppFactory) -> None:
    async with make_app([bad_continue]) as app:
        run_id = await app.start(bad_continue, 1)
        info = await app.wait_finished(run_id, timeout=10)
    assert info.status.value == "failed" and "bad_continue" in (info.error or "")
