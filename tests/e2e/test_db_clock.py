"""Time is the database's: a worker whose clock runs minutes ahead or behind (on
PostgreSQL) takes no lease early and fires no timer early or late."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kenning import App, RunStatus
from kenning.stores.postgres import PostgresStore
from tests.pg_server import pg_dsn, pg_server  # noqa: F401  (fixtures)

WORKER = Path(__file__).with_name("skewed_worker.py")
NAP = 2.0


def spawn(dsn: str, worker_id: str, skew: float) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "sdk")}
    return subprocess.Popen([sys.executable, str(WORKER), dsn, worker_id, str(skew)], env=env)


@pytest.mark.parametrize("skew", [300.0, -300.0])
async def test_skewed_worker_keeps_the_database_time(
    pg_dsn: str, processes: list[subprocess.Popen[bytes]], skew: float  # noqa: F811
) -> None:
    async with App(pg_dsn, worker=False) as client:
        store = client.store
        assert isinstance(store, PostgresStore)
        # a run another worker holds, its lease live for 20 s more by the database's clock
        await client.start("naps", 0.0, run_id="held")
        [held] = await store.claim_runs("w-test", limit=1, lease_seconds=20, run_ids=["held"])
        processes.append(spawn(pg_dsn, f"skewed{skew:+.0f}", skew))
        await client.start("naps", 0.0, run_id="warm-up")  # the worker is up once it is done
        assert await client.result("warm-up", timeout=30) == "slept 0.0"

        await client.start("naps", NAP, run_id="nap")
        assert await client.result("nap", timeout=30) == f"slept {NAP}"
        nap = await store.get_run("nap")
        assert nap is not None and nap.finished_at is not None
        late = nap.finished_at - (nap.created_at + NAP)  # both stamped by the database clock
        assert 0.0 <= late < 1.0, f"timer fired {late:+.3f} s from its due time"

        again = await store.get_run("held")
        assert again is not None and again.status is RunStatus.RUNNING
        assert (again.lease_owner, again.epoch) == ("w-test", held.lease.epoch), \
            "a live lease was taken by a worker whose clock runs ahead"
