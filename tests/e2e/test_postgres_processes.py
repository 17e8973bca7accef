"""PostgreSQL across real OS processes: a pool of workers with one killed by SIGKILL, and a
sink that answers 503 while the database is down and 202 again when it is back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import aiohttp

from kenning import App, RunStatus
from tests.conftest import free_port
from tests.pg_server import PgServer, pg_dsn, pg_server  # noqa: F401  (fixtures)

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "sdk"), str(ROOT)])}


async def test_a_killed_worker_loses_nothing_and_nothing_runs_twice_to_the_end(
    pg_dsn: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]  # noqa: F811
) -> None:
    markers = {w: tmp_path / f"{w}.log" for w in ("w1", "w2", "w3")}
    async with App(pg_dsn, worker=False) as client:
        run_ids = [await client.start("three_steps", i, run_id=f"r{i}") for i in range(24)]
        for worker_id, marker in markers.items():
            processes.append(subprocess.Popen(
                [sys.executable, str(HERE / "pool_worker.py"), pg_dsn, worker_id, str(marker)],
                env=ENV))
        async with asyncio.timeout(30):  # until w1 holds runs in the middle of a step
            while True:
                held = [r for r in await client.store.list_runs(status=RunStatus.RUNNING,
                                                                limit=100)
                        if r.lease_owner == "w1"]
                if held and markers["w1"].exists() and markers["w1"].read_text():
                    break
                await asyncio.sleep(0.02)
        processes[0].send_signal(signal.SIGKILL)
        processes[0].wait(timeout=10)

        results = [await client.result(r, timeout=60) for r in run_ids]
        assert results == [i + 3 for i in range(24)]
        for run_id in run_ids:
            history = await client.history(run_id)
            assert [(s.seq, s.name) for s in history] == [(i, "slow_add") for i in range(3)]
            assert (await client.get_run(run_id)).status is RunStatus.COMPLETED
    started = [line.split() for m in markers.values() if m.exists()
               for line in m.read_text().splitlines()]
    keys_by_worker: dict[str, set[str]] = {}
    for key, worker in started:
        keys_by_worker.setdefault(worker, set()).add(key)
    every_step = {f"r{i}:{s}" for i in range(24) for s in range(3)}
    assert set().union(*keys_by_worker.values()) == every_step
    redone = keys_by_worker["w1"] & (keys_by_worker.get("w2", set())
                                     | keys_by_worker.get("w3", set()))
    assert redone, "the steps w1 was in when it died were run again by the others"


async def test_sink_answers_503_while_the_database_is_down_and_loses_nothing(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    server = PgServer()
    await asyncio.to_thread(server.start)
    try:
        dsn = server.dsn("postgres")
        port = free_port()
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "kenning.runtime.cli", "sink", "--database", dsn,
             "--port", str(port)], env=ENV))
        url = f"http://127.0.0.1:{port}/"
        accepted: list[str] = []
        statuses: list[int] = []
        phase = {"name": "before"}
        seen: dict[str, set[int]] = {"before": set(), "down": set(), "after": set()}

        async def post(http: aiohttp.ClientSession) -> None:
            event_id = str(uuid.uuid4())
            headers = {"ce-specversion": "1.0", "ce-type": "load", "ce-source": "/test",
                       "ce-id": event_id, "content-type": "application/json"}
            try:
                async with http.post(url, data=b'{"n": 1}', headers=headers) as response:
                    statuses.append(response.status)
                    seen[phase["name"]].add(response.status)
                    if response.status == 202:
                        accepted.append(event_id)
            except aiohttp.ClientError:
                seen[phase["name"]].add(0)

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
            async with asyncio.timeout(30):
                while True:  # the sink is up
                    try:
                        async with http.get(f"http://127.0.0.1:{port}/readyz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.05)

            async def traffic(seconds: float) -> None:
                loop = asyncio.get_running_loop()
                end = loop.time() + seconds
                while loop.time() < end:
                    await asyncio.gather(*(post(http) for _ in range(4)))

            await traffic(0.5)
            phase["name"] = "down"
            await asyncio.to_thread(server.pg_ctl_stop, "fast")
            await traffic(1.5)
            await asyncio.to_thread(server.pg_ctl_start)
            phase["name"] = "after"
            async with asyncio.timeout(30):
                while 202 not in seen["after"]:
                    await traffic(0.3)
            await traffic(0.5)

        assert seen["before"] == {202}
        assert 503 in seen["down"] and 202 not in seen["down"]
        assert 202 in seen["after"]
        assert set(statuses) <= {202, 503}, "only 202 or 503, never a 500"
        assert all(0 not in answers for answers in seen.values()), "no dropped connection"
        stored = set(server.psql("SELECT id FROM events").split())
        assert set(accepted) <= stored, "every accepted event is in the database"
    finally:
        await asyncio.to_thread(server.stop)
