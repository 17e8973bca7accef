"""The programming model under SIGKILL: each path is replayed from history in a fresh
process, on SQLite and on PostgreSQL.

A worker process runs a workflow to a ``hang_once`` activity (see model_worker.py), is
killed there, and a second process resumes the run from what the first recorded.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kenning import App, RunStatus
from kenning.core.models import StepKind
from tests.pg_server import pg_dsn, pg_server  # noqa: F401  (fixtures)

WORKER = Path(__file__).with_name("model_worker.py")


@pytest.fixture(params=["sqlite", "postgres"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_dsn"))
    return str(tmp_path / "model.db")


def spawn(database: str, worker_id: str, marker: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "sdk")}
    return subprocess.Popen([sys.executable, str(WORKER), database, worker_id, str(marker)],
                            env=env)


async def crash_and_resume(client: App, database: str, tmp_path: Path,
                           processes: list[subprocess.Popen[bytes]], run_id: str,
                           key: str, *, before_kill: Any = None) -> Any:
    """Run until the worker hangs at ``key``, SIGKILL it, resume in a fresh process."""
    marker = tmp_path / "marker"
    first = spawn(database, "model-1", marker)
    processes.append(first)
    if before_kill is not None:
        await before_kill()
    async with asyncio.timeout(30):
        while not marker.exists() or key not in marker.read_text().splitlines():
            await asyncio.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    processes.append(spawn(database, "model-2", marker))
    result = await client.result(run_id, timeout=40)
    assert marker.read_text().splitlines().count(key) == 2  # the killed attempt, the retry
    return result


async def test_concurrent_branches_replay_after_a_kill(
        database: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    async with App(database, worker=False) as client:
        run_id = await client.start("model_fan_out", run_id="fan")
        result = await crash_and_resume(client, database, tmp_path, processes, run_id, "a2")
        assert result == [["a1", "a2"], ["b1", "b2"]]
        history = await client.history(run_id)
    assert sorted(s.seq for s in history) == [0, 1, 2, 3]
    # b's steps were delivered before a's second one was issued
    by_ordinal = sorted(history, key=lambda s: s.delivered_at)
    assert [s.seq for s in by_ordinal][-1] == 3


async def test_a_race_replays_after_a_kill(
        database: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    async with App(database, worker=False) as client:
        run_id = await client.start("model_race", run_id="race")
        result = await crash_and_resume(client, database, tmp_path, processes, run_id,
                                        "race-timer")
        assert result == "race-timer"
        kinds = [s.kind for s in await client.history(run_id)]
    assert kinds[:2] == [StepKind.TIMER, StepKind.CANCELLED]


async def test_children_replay_after_a_kill(
        database: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    async with App(database, worker=False) as client:
        run_id = await client.start("model_parent", run_id="parent")
        result = await crash_and_resume(client, database, tmp_path, processes, run_id,
                                        "parent")
        assert result == [10, 20]
        children = await client.store.list_runs(parent=run_id)
    assert sorted(c.run_id for c in children) == ["parent-0", "parent-1"]
    assert all(c.status is RunStatus.COMPLETED for c in children)


async def test_continue_as_new_replays_after_a_kill(
        database: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    async with App(database, worker=False) as client:
        run_id = await client.start("model_loop", 1, run_id="loop")
        result = await crash_and_resume(client, database, tmp_path, processes, run_id, "loop")
        assert result == 3
        chapters = await client.chapters(run_id)
        current = await client.history(run_id)
    assert [c.chapter for c in chapters] == [0, 1]
    assert [s.name for s in current] == ["work"]


async def test_first_of_several_events_replays_after_a_kill(
        database: str, tmp_path: Path, processes: list[subprocess.Popen[bytes]]) -> None:
    async with App(database, worker=False) as client:
        run_id = await client.start("model_first_of", run_id="first")

        async def send() -> None:
            async with asyncio.timeout(30):
                while (await client.get_run(run_id)).status is not RunStatus.WAITING_FOR_EVENT:
                    await asyncio.sleep(0.05)
            await client.publish("model.failed", {"id": "x"})

        result = await crash_and_resume(client, database, tmp_path, processes, run_id,
                                        "first-model.failed", before_kill=send)
        assert result == "first-model.failed"
