"""No loop dies quietly: store outages are ridden out with backoff and logged once each way;
a loop that dies of a bug surfaces (``app.failure``, ``serve()`` and ``watch()`` raise)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from kenning import LoopFailed, StoreUnavailable, WorkflowContext, activity, workflow
from kenning.core.outage import Outage

from .conftest import AppFactory


@activity
async def sup_double(ctx: WorkflowContext, x: int) -> int:
    return 2 * x


@workflow
async def sup_flow(ctx: WorkflowContext, x: int) -> int:
    return await sup_double(ctx, x)


def failing(real: Callable[..., Awaitable[Any]], error: Callable[[], BaseException],
            times: int) -> tuple[Callable[..., Awaitable[Any]], list[int]]:
    """``real`` that raises ``error()`` on its first ``times`` calls; counts calls."""
    calls = [0]

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] <= times:
            raise error()
        return await real(*args, **kwargs)

    return wrapper, calls


def test_an_outage_is_logged_once_when_it_starts_and_once_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    outage = Outage("test loop", logging.getLogger("test.outage"), first_delay=0.1,
                    max_delay=1.0)
    with caplog.at_level(logging.INFO, logger="test.outage"):
        delays = [outage.failed(StoreUnavailable("down")) for _ in range(20)]
        assert outage.down
        outage.recovered()
        outage.recovered()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert len(lines) == 2
    assert "test loop failed (down)" in lines[0] and "works again" in lines[1]
    assert not outage.down
    assert all(0.05 <= d <= 0.1 for d in delays[:1])
    assert max(delays) <= 1.0 and min(delays[10:]) >= 0.5, "capped, jittered over [cap/2, cap]"
    assert len(set(delays[10:])) > 1, "jittered, not all equal"


async def test_the_worker_rides_out_store_errors_of_every_loop(make_app: AppFactory) -> None:
    async with make_app([sup_flow]) as app:
        store: Any = app.store
        store.next_wake_at, wake_calls = failing(
            store.next_wake_at, lambda: StoreUnavailable("next_wake_at: down"), 5)
        store.claim_runs, claim_calls = failing(
            store.claim_runs, lambda: StoreUnavailable("claim_runs: down"), 5)
        store.due_outbox, _ = failing(
            store.due_outbox, lambda: StoreUnavailable("due_outbox: down"), 3)
        run_id = await sup_flow.start(app, 21)
        assert await app.result(run_id, timeout=20) == 42
        assert wake_calls[0] > 5 or claim_calls[0] > 5
        assert app.alive and app.failure is None


async def test_a_loop_dying_of_a_bug_surfaces_from_serve(make_app: AppFactory) -> None:
    async with make_app([sup_flow], probe_port=0, probe_host="127.0.0.1") as app:
        store: Any = app.store
        assert app.probe_address is not None
        url = f"http://127.0.0.1:{app.probe_address[1]}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/healthz") as response:
                assert response.status == 200
            store.next_wake_at, _ = failing(store.next_wake_at,
                                            lambda: ZeroDivisionError("a bug"), 1)
            store.claim_runs, _ = failing(store.claim_runs, lambda: ZeroDivisionError("a bug"),
                                          1)
            await sup_flow.start(app, 1)  # wakes the claim loop
            with pytest.raises(LoopFailed, match="ZeroDivisionError: a bug"):
                async with asyncio.timeout(10):
                    await app.serve(port=0)
            assert isinstance(app.failure, LoopFailed) and not app.alive
            async with http.get(f"{url}/healthz") as response:
                assert response.status == 503
                assert "ZeroDivisionError" in (await response.json())["reason"]
        with pytest.raises(LoopFailed):
            await app.watch()


async def test_probes_say_ready_healthy_and_count_the_work(make_app: AppFactory) -> None:
    async with make_app([sup_flow], probe_port=0, probe_host="127.0.0.1") as app:
        assert app.probe_address is not None
        url = f"http://127.0.0.1:{app.probe_address[1]}"
        for x in range(3):
            assert await app.result(await sup_flow.start(app, x), timeout=10) == 2 * x
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/readyz") as response:
                assert response.status == 200
            async with http.get(f"{url}/metrics") as response:
                assert response.status == 200
                text = await response.text()
            store: Any = app.store
            store.ping, _ = failing(store.ping, lambda: StoreUnavailable("the disk is gone"), 1)
            async with http.get(f"{url}/readyz") as response:
                assert response.status == 503
                assert "the disk is gone" in (await response.json())["reason"]
            async with http.get(f"{url}/readyz") as response:
                assert response.status == 200
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line and not line.startswith("#")}
    assert values["kenning_worker_claims_total"] >= 3
    assert values["kenning_worker_steps_committed_total"] >= 3
    assert values["kenning_worker_activity_attempts_total"] == 3
    assert values["kenning_worker_activity_failures_total"] == 0
    assert values["kenning_worker_step_commit_seconds_count"] >= 3
    assert values["kenning_worker_runs_held"] == 0
    assert values["kenning_outbox_backlog"] == 0
    assert "kenning_worker_lease_renewals_total" in values
    assert "kenning_worker_lease_losses_total" in values
