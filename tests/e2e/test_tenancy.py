"""Namespaces, pools and builds as boundaries, across real worker processes on SQLite and
PostgreSQL: every step of every run is executed by a worker of the run's namespace and
pool (each activity returns the id of the worker that ran it), also after a worker is
killed with SIGKILL and its leases are taken over; one event posted to two namespaces wakes
the runs of both; runs of build v1 finish on v1 workers while new runs go to v2."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kenning import App, RunStatus
from tests.pg_server import PgServer, pg_dsn, pg_server  # noqa: F401  (fixtures)

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "sdk"), str(ROOT)])}
WORKER = HERE / "tenant_worker.py"
NAMESPACES = ("team-a", "team-b")
POOLS = ("p1", "p2")


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A SQLite file or a fresh PostgreSQL database that the processes share."""
    if request.param == "postgres":
        dsn: str = request.getfixturevalue("pg_dsn")
        return dsn
    return str(tmp_path / "tenancy.db")


def spawn(processes: list[subprocess.Popen[bytes]], database: str, worker_id: str,
          *args: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, str(WORKER), database, worker_id, *args], env=ENV)
    processes.append(proc)
    return proc


async def until(check: object, what: str, timeout: float = 30) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not await check():  # type: ignore[operator]
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


async def test_runs_execute_only_in_their_namespace_and_pool_even_after_a_takeover(
        database: str, processes: list[subprocess.Popen[bytes]]) -> None:
    workers: dict[str, tuple[str, str]] = {}  # worker id -> (namespace, pool)
    for ns in NAMESPACES:
        for pool in POOLS:
            for n in range(2 if (ns, pool) == ("team-a", "p1") else 1):
                workers[f"{ns}-{pool}-{n}"] = (ns, pool)
    victim = "team-a-p1-0"
    async with App(database, worker=False) as client:
        expected: dict[str, tuple[str, str | None]] = {}
        for ns in NAMESPACES:
            for pool in (*POOLS, None):
                for i in range(3):
                    run_id = f"{ns}-{pool or 'any'}-{i}"
                    await client.start("tenant_flow", run_id=run_id, namespace=ns, pool=pool)
                    expected[run_id] = (ns, pool)
        spawn(processes, database, victim, "--namespace", "team-a", "--pool", "p1",
              "--build-id", "b1")

        async def victim_mid_step() -> bool:
            running = await client.store.list_runs(status=RunStatus.RUNNING, limit=100)
            return any(r.lease_owner == victim for r in running)

        await until(victim_mid_step, f"{victim} to hold a run in the middle of a step")
        held = {r.run_id for r in await client.store.list_runs(status=RunStatus.RUNNING,
                                                                limit=100)
                if r.lease_owner == victim}
        processes[0].send_signal(signal.SIGKILL)
        processes[0].wait(timeout=10)
        for worker_id, (ns, pool) in workers.items():
            if worker_id != victim:
                spawn(processes, database, worker_id, "--namespace", ns, "--pool", pool,
                      "--build-id", "b1")

        async def all_waiting() -> bool:
            runs = await client.store.list_runs(limit=100)
            return all(r.status is RunStatus.WAITING_FOR_EVENT for r in runs)

        await until(all_waiting, "every run to wait for tenancy.go", timeout=60)
        # the same event (source and id) posted to both namespaces wakes the runs of both
        for ns in NAMESPACES:
            result = await client.publish("tenancy.go", {}, id="go-1", source="/broker",
                                          namespace=ns)
            assert len(result.resumed_runs) == 9, (ns, result)
        for run_id, (ns, pool) in expected.items():
            steps = await client.result(run_id, timeout=60)
            assert len(steps) == 2
            for worker_id in steps:
                assert workers[worker_id][0] == ns, (run_id, steps)
                if pool is not None:
                    assert workers[worker_id][1] == pool, (run_id, steps)
            run = await client.store.get_run(run_id)
            assert run is not None and run.build_id == "b1"
        assert held
        for run_id in held:  # redone by another worker of team-a (p1 for pinned runs)
            assert victim not in await client.result(run_id)
        assert await client.store.count_events() == 2


async def test_runs_of_build_v1_finish_on_v1_while_new_runs_go_to_v2(
        database: str, processes: list[subprocess.Popen[bytes]]) -> None:
    async with App(database, worker=False) as client:
        v1 = spawn(processes, database, "v1-a", "--build-id", "v1", "--code", "v1")
        old = [await client.start("upgrade_flow", run_id=f"old-{i}") for i in range(4)]

        async def old_waiting() -> bool:
            runs = [await client.get_run(r) for r in old]
            return all(r.status is RunStatus.WAITING_FOR_EVENT for r in runs)

        await until(old_waiting, "the v1 runs to wait")
        # the upgrade: v1 keeps one draining worker, v2 takes new runs (waiting runs hold
        # no lease, so the first v1 worker may simply go away)
        v1.send_signal(signal.SIGKILL)
        v1.wait(timeout=10)
        spawn(processes, database, "v2-a", "--build-id", "v2", "--code", "v2")
        spawn(processes, database, "v1-b", "--build-id", "v1", "--code", "v1", "--drain")
        new = [await client.start("upgrade_flow", run_id=f"new-{i}") for i in range(4)]

        async def new_waiting() -> bool:
            runs = [await client.get_run(r) for r in new]
            return all(r.status is RunStatus.WAITING_FOR_EVENT for r in runs)

        await until(new_waiting, "the v2 runs to wait")
        await client.publish("upgrade.go")
        for run_id in old:
            assert await client.result(run_id, timeout=60) == ["v1-a", "v1-b"]
            assert (await client.get_run(run_id)).build_id == "v1"
        for run_id in new:
            assert await client.result(run_id, timeout=60) == ["v2-a:v2"] * 3
            assert (await client.get_run(run_id)).build_id == "v2"
