"""The deadlock detector: code that blocks the worker's event loop is reported with its stack."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from kenning import RunFailed, WorkflowContext, activity, workflow
from kenning.runtime.watchdog import LoopWatchdog
from kenning.runtime.worker import WorkerOptions

from .conftest import AppFactory


@pytest.fixture
def backend() -> str:
    """The watchdog watches the event loop, not the store: SQLite is enough."""
    return "sqlite"

WATCHED = WorkerOptions(poll_interval=0.05, lease_seconds=5.0, deadlock_threshold=0.2)


def blocking_helper() -> None:
    """Stands for a synchronous client call made from workflow code."""
    time.sleep(0.6)


@activity
async def noop(ctx: WorkflowContext) -> str:
    """A step after the block."""
    return "ok"


@activity
async def blocking_activity(ctx: WorkflowContext) -> str:
    """Blocks the loop from inside an activity."""
    time.sleep(0.6)  # noqa: ASYNC251  (the misuse under test)
    return "slept"


@workflow(name="watchdog_blocks")
async def blocks(ctx: WorkflowContext) -> str:
    """Blocks the event loop, then takes a step."""
    blocking_helper()
    return await noop(ctx)


@workflow(name="watchdog_blocks_in_activity")
async def blocks_in_activity(ctx: WorkflowContext) -> str:
    """Calls an activity that blocks."""
    return await blocking_activity(ctx)


@workflow(name="watchdog_awaits")
async def awaits(ctx: WorkflowContext) -> str:
    """Waits without blocking: nothing to report."""
    await asyncio.sleep(0.6)
    return await noop(ctx)


def watchdog_of(app: object) -> LoopWatchdog:
    worker = getattr(app, "worker", None)
    assert worker is not None and worker.watchdog is not None
    watchdog: LoopWatchdog = worker.watchdog
    return watchdog


async def test_blocking_workflow_code_is_reported_with_its_stack(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    async with make_app([blocks], worker_options=WATCHED) as app:
        with caplog.at_level(logging.ERROR, logger="kenning.runtime.watchdog"):
            run_id = await blocks.start(app)
            assert await app.result(run_id, timeout=10) == "ok"  # reported, not failed
        watchdog = watchdog_of(app)
        assert [r.run_id for r in watchdog.reports] == [run_id]
        report = watchdog.reports[0]
        assert report.activity is None and report.seconds >= 0.2
        assert "in blocking_helper" in report.stack and "in blocks" in report.stack
        assert watchdog.registry.get_sample_value("kenning_worker_loop_blocked_total") == 1
        assert f"run {run_id}: workflow code has blocked the worker's event loop" in caplog.text


async def test_a_blocking_activity_is_named(make_app: AppFactory) -> None:
    async with make_app([blocks_in_activity], worker_options=WATCHED) as app:
        run_id = await blocks_in_activity.start(app)
        assert await app.result(run_id, timeout=10) == "slept"
        assert [(r.run_id, r.activity) for r in watchdog_of(app).reports] == \
            [(run_id, "blocking_activity")]


async def test_the_run_can_be_failed_for_it(make_app: AppFactory) -> None:
    options = WorkerOptions(poll_interval=0.05, lease_seconds=5.0, deadlock_threshold=0.2,
                            fail_deadlocked_runs=True)
    async with make_app([blocks], worker_options=options) as app:
        run_id = await blocks.start(app)
        with pytest.raises(RunFailed, match=r"WorkflowBlocked: run .* workflow code blocked "
                                            r"the worker's event loop for more than 0\.2 s"):
            await app.result(run_id, timeout=10)


async def test_code_that_awaits_is_not_reported(make_app: AppFactory) -> None:
    async with make_app([awaits], worker_options=WATCHED) as app:
        assert await app.result(await awaits.start(app), timeout=10) == "ok"
        assert watchdog_of(app).reports == []


async def test_the_watchdog_can_be_switched_off(make_app: AppFactory) -> None:
    options = WorkerOptions(poll_interval=0.05, deadlock_threshold=None)
    async with make_app([noop_wf], worker_options=options) as app:
        assert app.worker is not None and app.worker.watchdog is None
        assert await app.result(await noop_wf.start(app), timeout=10) == "ok"


@workflow(name="watchdog_noop")
async def noop_wf(ctx: WorkflowContext) -> str:
    """One step."""
    return await noop(ctx)


async def test_blocks_are_counted_on_the_workers_metrics(make_app: AppFactory) -> None:
    import aiohttp

    async with make_app([blocks], worker_options=WATCHED, probe_port=0,
                        probe_host="127.0.0.1") as app:
        assert await app.result(await blocks.start(app), timeout=10) == "ok"
        assert app.probe_address is not None
        async with aiohttp.ClientSession() as http, \
                http.get(f"http://127.0.0.1:{app.probe_address[1]}/metrics") as response:
            text = await response.text()
    assert "kenning_worker_loop_blocked_total 1.0" in text
