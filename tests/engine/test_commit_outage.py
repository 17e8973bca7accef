"""A finished step is not thrown away when its commit meets a store outage.

A real PostgreSQL server of the test's own is stopped (``pg_ctl stop -m immediate``) while
an activity runs; the activity finishes during the outage and its commit is retried. While
the lease holds, the step commits once the server is back and the activity ran once; when
the lease runs out first, the run is abandoned (logged) and resumed by the next claim.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from kenning import RunStatus, WorkflowContext, activity, workflow
from kenning.core.errors import LeaseLost
from kenning.core.execution import Outcome, RunExecution
from kenning.core.models import NewRun
from kenning.stores.postgres import PostgresStore
from tests.pg_server import PgServer

CALLS: list[str] = []
GATE: list[asyncio.Event] = []  # one per test: an event belongs to the test's loop


@activity
async def slow_step(ctx: WorkflowContext, name: str) -> str:
    CALLS.append(name)
    if len(CALLS) == 1:
        await GATE[0].wait()  # the test stops the server, then lets the activity finish
    return f"done {name}"


@workflow
async def one_step(ctx: WorkflowContext, name: str) -> str:
    return await slow_step(ctx, name)


@pytest.fixture(scope="module")
def own_server() -> Iterator[PgServer]:
    server = PgServer(durable=True)  # an immediate stop must not lose recent commits
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def pg(own_server: PgServer) -> Any:
    store = PostgresStore(own_server.dsn(own_server.create_database()), connect_timeout=2.0,
                          command_timeout=5.0)
    await store.open()
    CALLS.clear()
    GATE[:] = [asyncio.Event()]
    yield store
    await store.close()


async def _claim(store: PostgresStore, lease_seconds: float) -> RunExecution:
    await store.create_run(NewRun("r-outage", "default", "one_step", '{"args":["a"],"kwargs":{}}'))
    [claimed] = await store.claim_runs("w1", limit=1, lease_seconds=lease_seconds)
    return RunExecution(store, one_step, claimed, store.clock)


async def _outage(server: PgServer, seconds: float) -> None:
    await asyncio.to_thread(server.pg_ctl_stop, "immediate")
    GATE[0].set()
    await asyncio.sleep(seconds)
    await asyncio.to_thread(server.pg_ctl_start)


async def test_commit_is_retried_while_the_lease_holds(
    pg: PostgresStore, own_server: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    execution = await _claim(pg, lease_seconds=60)
    task = asyncio.create_task(execution.execute())
    while not CALLS:
        await asyncio.sleep(0.01)
    with caplog.at_level(logging.INFO, "kenning"):
        await _outage(own_server, 2.0)
        outcome = await asyncio.wait_for(task, 60)
    assert outcome is Outcome.COMPLETED
    assert CALLS == ["a"], "the activity ran once: its finished step was kept"
    run = await pg.get_run("r-outage")
    assert run is not None and run.status is RunStatus.COMPLETED
    assert [s.value for s in await pg.load_history("r-outage")] == ['"done a"']
    retrying = [r for r in caplog.records if "retrying the commit" in r.getMessage()]
    assert len(retrying) == 1 and retrying[0].levelno == logging.WARNING  # once per outage
    back = [r for r in caplog.records if "store reachable again" in r.getMessage()]
    assert len(back) == 1, "the end of the outage is logged once"
    writes = [r for r in caplog.records if r.name.endswith("postgres_writer")
              and r.levelno >= logging.WARNING]
    assert len(writes) <= 2, [r.getMessage() for r in writes]  # start and end, not per batch


async def test_lease_running_out_abandons_and_the_run_resumes(
    pg: PostgresStore, own_server: PgServer, caplog: pytest.LogCaptureFixture
) -> None:
    execution = await _claim(pg, lease_seconds=1.0)
    task = asyncio.create_task(execution.execute())
    while not CALLS:
        await asyncio.sleep(0.01)
    with caplog.at_level(logging.INFO, "kenning"):
        await _outage(own_server, 2.5)
        outcome = await asyncio.wait_for(task, 60)
    assert outcome is Outcome.ABANDONED
    assert any("has run out" in r.getMessage() and "r-outage" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    outcomes = []
    async with asyncio.timeout(30):  # the next owner counts the lost attempt, then retries
        while Outcome.COMPLETED not in outcomes:
            for claimed in await pg.claim_runs("w2", limit=1, lease_seconds=30):
                outcomes.append(await RunExecution(pg, one_step, claimed, pg.clock).execute())
            await asyncio.sleep(0.1)
    assert outcomes == [Outcome.SUSPENDED, Outcome.COMPLETED]
    assert CALLS == ["a", "a"], "at least once: the step was lost with the lease"


async def test_lost_lease_is_logged_once_with_the_new_epoch(
    pg: PostgresStore, caplog: pytest.LogCaptureFixture
) -> None:
    execution = await _claim(pg, lease_seconds=0.2)
    task = asyncio.create_task(execution.execute())
    while not CALLS:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.3)
    [taken] = await pg.claim_runs("w2", limit=1, lease_seconds=30)  # the lease expired
    with pytest.raises(LeaseLost) as lost:
        await pg.append_steps(execution.lease, [])
    assert (lost.value.epoch, lost.value.owner, lost.value.status) == (
        taken.lease.epoch, "w2", "running")
    with caplog.at_level(logging.INFO, "kenning"):
        GATE[0].set()
        assert await asyncio.wait_for(task, 30) is Outcome.ABANDONED
    lines = [r for r in caplog.records if "lease lost" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.WARNING
    assert "r-outage" in lines[0].getMessage()
    assert f"new owner's epoch {taken.lease.epoch}" in lines[0].getMessage()
