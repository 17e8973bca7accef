"""``kenning.testing.replay``: recorded histories through current code, and their export."""

from __future__ import annotations

import asyncio
import json
import traceback
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from kenning import (
    ActivityError,
    App,
    ConfigurationError,
    NonDeterminismError,
    RunStatus,
    TerminalError,
    WorkflowContext,
    activity,
    sleep,
    wait_event,
    workflow,
)
from kenning.core.history_doc import RecordedHistory
from kenning.runtime.cli import main
from kenning.testing import TestEnv, replay
from tests.pg_server import pg_dsn, pg_server  # noqa: F401  (fixtures)

CALLS: list[str] = []


@activity
async def reserve(ctx: WorkflowContext, item: str) -> str:
    """Reserve an item."""
    CALLS.append(f"reserve {item}")
    return f"R-{item}"


@activity
async def charge(ctx: WorkflowContext, amount: int) -> int:
    """Charge an amount."""
    CALLS.append(f"charge {amount}")
    return amount


@activity(name="reject")
async def reject(ctx: WorkflowContext) -> None:
    """Always fails for good."""
    raise TerminalError("card declined")


@workflow(name="shop")
async def shop(ctx: WorkflowContext, item: str, amount: int) -> dict[str, Any]:
    """Reserve, charge, then wait for shipping."""
    reservation = await reserve(ctx, item)
    paid = await charge(ctx, amount)
    shipped = await wait_event(ctx, "shipped", match={"data.item": item})
    return {"reservation": reservation, "paid": paid, "at": ctx.now().isoformat(),
            "tracking": shipped.data["tracking"]}


def shop_variant(body: Any) -> Any:
    """Another version of ``shop`` (same durable name), as a later deploy would have it."""
    return workflow(name="shop")(body)


@shop_variant
async def shop_reordered(ctx: WorkflowContext, item: str, amount: int) -> Any:
    await charge(ctx, amount)
    await reserve(ctx, item)


@shop_variant
async def shop_other_event(ctx: WorkflowContext, item: str, amount: int) -> Any:
    await reserve(ctx, item)
    await charge(ctx, amount)
    await wait_event(ctx, "delivered")


@shop_variant
async def shop_sleeps_first(ctx: WorkflowContext, item: str, amount: int) -> Any:
    await reserve(ctx, item)
    await charge(ctx, amount)
    await sleep(ctx, 5)


@shop_variant
async def shop_stops_early(ctx: WorkflowContext, item: str, amount: int) -> Any:
    return await reserve(ctx, item)


@shop_variant
async def shop_goes_on(ctx: WorkflowContext, item: str, amount: int) -> Any:
    await reserve(ctx, item)
    await charge(ctx, amount)
    await wait_event(ctx, "shipped", match={"data.item": item})
    await charge(ctx, 1)  # a step after the end of a completed history


@shop_variant
async def shop_swallows(ctx: WorkflowContext, item: str, amount: int) -> Any:
    reservation = await reserve(ctx, item)
    try:
        await charge(ctx, amount + 1)  # a changed argument is not a changed step
        await wait_event(ctx, "shipped", match={"data.item": item})
    except BaseException:  # swallows the stop at the history's end, as bad code would
        pass
    return reservation


@workflow(name="declined")
async def declined(ctx: WorkflowContext) -> str:
    """Lets the activity's failure fail the run."""
    await reject(ctx)
    return "unreachable"


async def record_shop(env: TestEnv, *, ship: bool) -> RecordedHistory:
    run_id = await env.start(shop, "book", 12)
    await env.wait_status(run_id, RunStatus.WAITING_FOR_EVENT)
    if ship:
        await env.publish("shipped", {"item": "book", "tracking": "T-1"})
        await env.result(run_id)
    run = await env.store.get_run(run_id)
    assert run is not None
    return RecordedHistory.of(run, await env.history(run_id))


async def test_a_completed_history_replays_to_its_result_without_running_activities() -> None:
    async with TestEnv([shop]) as env:
        recorded = await record_shop(env, ship=True)
        expected = await env.result(recorded.run_id)
    CALLS.clear()
    replayed = replay(shop, recorded.to_json())
    assert replayed.result == expected  # ctx.now() included: workflow time is recorded
    assert (replayed.error, replayed.stopped_at, replayed.steps_replayed) == (None, None, 3)
    assert CALLS == []


async def test_changed_code_raises_naming_the_step() -> None:
    async with TestEnv([shop]) as env:
        done = (await record_shop(env, ship=True)).to_json()
    with pytest.raises(NonDeterminismError,
                       match=r"step 0: history has activity 'reserve', code called activity "
                             r"'charge'"):
        replay(shop_reordered, done)
    with pytest.raises(NonDeterminismError, match=r"step 1: history has activity 'charge', "
                                                  r"code returned without it"):
        replay(shop_stops_early, done)
    with pytest.raises(NonDeterminismError, match=r"step 3: history ends there \(the run "
                                                  r"completed\), code called activity 'charge'"):
        replay(shop_goes_on, done)
    with pytest.raises(NonDeterminismError, match=r"step 2: history has event 'shipped', code "
                                                  r"called event 'delivered'"):
        replay(shop_other_event, done)


async def test_a_history_that_ends_in_a_wait_fits_code_that_reaches_that_wait() -> None:
    async with TestEnv([shop]) as env:
        waiting = (await record_shop(env, ship=False)).to_json()
    assert waiting["status"] == "waiting_for_event"
    assert [w["seq"] for w in waiting["waits"]] == [2]
    replayed = replay(shop, waiting)
    assert (replayed.result, replayed.stopped_at) == (None, 2)
    with pytest.raises(NonDeterminismError, match=r"step 2: the run waits at step 2: event "
                                                  r"'shipped'; code called event 'delivered'"):
        replay(shop_other_event, waiting)
    with pytest.raises(NonDeterminismError, match="code called timer 'sleep'"):
        replay(shop_sleeps_first, waiting)
    # code that catches BaseException around the stop still fits: the stop holds
    assert replay(shop_swallows, waiting).stopped_at == 2


async def test_a_failed_history_replays_to_its_error() -> None:
    async with TestEnv([declined]) as env:
        run_id = await env.start(declined)
        await env.wait_finished(run_id)
        run = await env.store.get_run(run_id)
        assert run is not None and run.status is RunStatus.FAILED
        doc = RecordedHistory.of(run, await env.history(run_id)).to_json()
    replayed = replay(declined, doc)
    assert isinstance(replayed.error, ActivityError) and "card declined" in str(replayed.error)
    frames = [f.name for f in traceback.extract_tb(replayed.error.__traceback__)]
    assert "declined" in frames, frames  # where the workflow's code raised it


async def record_on(database: str) -> tuple[str, str]:
    """A completed and a waiting run of ``shop`` on ``database``: their ids."""
    async with App(database, "w", workflows=[shop]) as app:
        done = await app.start(shop, "pen", 3)
        waiting = await app.start(shop, "ink", 4)
        for run_id in (done, waiting):
            async with asyncio.timeout(10):
                while (await app.get_run(run_id)).status is not RunStatus.WAITING_FOR_EVENT:
                    await asyncio.sleep(0.01)
        await app.publish("shipped", {"item": "pen", "tracking": "T-9"})
        await app.result(done, timeout=10)
        return done, waiting


def export(run_id: str, database: str) -> str:
    out = CliRunner().invoke(main, ["runs", "history", run_id, "--json", "--database", database],
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    return str(out.stdout)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_cli_export_is_what_replay_takes(tmp_path: Path, backend: str,
                                         request: pytest.FixtureRequest) -> None:
    database = (str(request.getfixturevalue("pg_dsn")) if backend == "postgres"
                else str(tmp_path / "k.db"))
    done, waiting = asyncio.run(record_on(database))
    text = export(done, database)
    doc = json.loads(text)
    assert doc["format"] == "kenning.history" and doc["version"] == 2
    assert doc["workflow"] == "shop" and doc["input"] == {"args": ["pen", 3], "kwargs": {}}
    assert [s["name"] for s in doc["steps"]] == ["reserve", "charge", "shipped"]
    path = tmp_path / "history.json"
    path.write_text(text)
    # no event loop here: replay runs its own; from a file path, a Path and the JSON text
    for source in (str(path), path, text):
        assert replay(shop, source).result["tracking"] == "T-9"
    with pytest.raises(NonDeterminismError, match="step 0"):
        replay(shop_reordered, path)
    waits = export(waiting, database)
    assert replay(shop, waits).stopped_at == 2
    with pytest.raises(NonDeterminismError, match="code called event 'delivered'"):
        replay(shop_other_event, waits)


def test_documents_that_are_not_histories_are_refused(tmp_path: Path) -> None:
    doc = RecordedHistory(run_id="r", workflow="shop", namespace="default",
                          input='{"args":["a",1],"kwargs":{}}', status=RunStatus.PENDING,
                          created_at=1.0).to_json()
    assert replay(shop, doc).stopped_at == 0  # a run that never ran fits any start
    with pytest.raises(ConfigurationError, match="not a Kenning history"):
        replay(shop, [{"seq": 0}])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="version 3 is not one this Kenning reads"):
        replay(shop, {**doc, "version": 3})
    with pytest.raises(ConfigurationError, match="missing 'steps'"):
        replay(shop, {k: v for k, v in doc.items() if k != "steps"})
    with pytest.raises(ConfigurationError, match="is of workflow 'shop', not 'declined'"):
        replay(declined, doc)
    with pytest.raises(ConfigurationError, match="cannot read history file"):
        replay(shop, tmp_path / "missing.json")


@activity(name="replay_part")
async def part(ctx: WorkflowContext, name: str, delay: float) -> str:
    await asyncio.sleep(delay)
    return name


async def _two_branches(ctx: WorkflowContext, swap: bool) -> list[str]:
    async def branch(name: str, delay: float) -> str:
        first = await part(ctx, f"{name}1", delay)
        return first + await part(ctx, f"{name}2", 0)

    a, b = branch("a", 0.2), branch("b", 0)
    return list(await asyncio.gather(*((b, a) if swap else (a, b))))


@workflow(name="replay_concurrent")
async def concurrent(ctx: WorkflowContext) -> list[str]:
    """Two branches whose steps complete out of issue order, then a race."""
    out = await _two_branches(ctx, swap=False)
    timer = asyncio.ensure_future(sleep(ctx, 0.05))
    event = asyncio.ensure_future(wait_event(ctx, "never"))
    await asyncio.wait([timer, event], return_when=asyncio.FIRST_COMPLETED)
    event.cancel()
    return out


async def test_a_concurrent_history_replays_and_changed_code_does_not(
        tmp_path: Path) -> None:
    async with TestEnv([concurrent]) as env:
        run_id = await env.start(concurrent)
        assert await env.result(run_id) == ["a1a2", "b1b2"]
        doc = RecordedHistory.of((await env.store.get_run(run_id)),  # type: ignore[arg-type]
                                 await env.history(run_id)).to_json()
    assert any("ordinal" in s for s in doc["steps"])
    assert (await asyncio.to_thread(replay, concurrent, doc)).result == ["a1a2", "b1b2"]

    @workflow(name="replay_concurrent")
    async def swapped(ctx: WorkflowContext) -> list[str]:
        await sleep(ctx, 0.05)  # a timer where the history has an activity
        return await _two_branches(ctx, swap=False)

    with pytest.raises(NonDeterminismError, match="step"):
        await asyncio.to_thread(replay, swapped, doc)
