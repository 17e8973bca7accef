"""Worker identities: unique by default, and never shared with a live holder of leases."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket

import pytest

from kenning import App, RunStatus, WorkflowContext, activity, workflow
from tests.conftest import wait_status
from tests.engine.conftest import FAST

RELEASE = asyncio.Event()


@activity
async def held_step(ctx: WorkflowContext) -> str:
    """Holds the run (and its lease) until the test releases it."""
    await RELEASE.wait()
    return "done"


@workflow
async def held_flow(ctx: WorkflowContext) -> str:
    """One step that waits for the test."""
    return await held_step(ctx)


def test_the_default_worker_id_is_host_pid_and_a_random_suffix(db_path: str) -> None:
    first, second = App(db_path).worker_id, App(db_path).worker_id
    pattern = rf"{re.escape(socket.gethostname())}-{os.getpid()}-[0-9a-f]{{6}}"
    assert re.fullmatch(pattern, first) and re.fullmatch(pattern, second)
    assert first != second


async def test_a_second_process_with_a_live_id_takes_a_fresh_one_and_says_so(
        db_path: str, caplog: pytest.LogCaptureFixture) -> None:
    RELEASE.clear()
    async with App(db_path, "worker-1", workflows=[held_flow], worker_options=FAST) as first:
        run_id = await first.start(held_flow)
        await wait_status(first, run_id, RunStatus.RUNNING)
        with caplog.at_level(logging.WARNING, logger="kenning.runtime.tenancy"):
            async with App(db_path, "worker-1", workflows=[held_flow],
                           worker_options=FAST) as second:
                assert second.worker_id.startswith("worker-1-")
                assert "worker id 'worker-1' still holds 1 live lease(s)" in caplog.text
                assert second.worker_id in caplog.text
                await asyncio.sleep(0.3)  # the second process does not take the run over
                run = await first.store.get_run(run_id)
                assert run is not None and run.lease_owner == "worker-1"
                RELEASE.set()
                assert await first.result(run_id, timeout=5) == "done"
    async with App(db_path, "worker-1", workflows=[held_flow], worker_options=FAST) as again:
        assert again.worker_id == "worker-1"  # no live leases left under it
