"""Crash recovery across real OS processes: a worker killed with SIGKILL mid-activity."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from kenning import App, RunStatus

WORKER = Path(__file__).with_name("crash_worker.py")


def spawn(db: Path, worker_id: str, marker: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "sdk")}
    return subprocess.Popen([sys.executable, str(WORKER), str(db), worker_id, str(marker)],
                            env=env)


async def wait_for_lines(marker: Path, count: int, timeout: float = 20) -> None:
    async with asyncio.timeout(timeout):
        while not marker.exists() or len(marker.read_text().splitlines()) < count:
            await asyncio.sleep(0.05)


@pytest.mark.parametrize("second_worker", ["other-worker", "worker-1"])
async def test_sigkill_mid_activity_completes_once(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]], second_worker: str
) -> None:
    db, marker = tmp_path / "crash.db", tmp_path / "marker"
    async with App(str(db), worker=False) as client:
        run_id = await client.start("order", 7, run_id="order-7")
        first = spawn(db, "worker-1", marker)
        processes.append(first)
        await wait_for_lines(marker, 1)
        assert (await client.get_run(run_id)).status is RunStatus.RUNNING
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)

        processes.append(spawn(db, second_worker, marker))
        result = await client.result(run_id, timeout=30)
        assert result == ["charged 7", "shipped after charged 7"]
        history = await client.history(run_id)
        assert [(s.seq, s.name) for s in history] == [(0, "charge"), (1, "ship")]
        # at least once: the killed attempt and the retry, with the same idempotency key
        assert marker.read_text().splitlines() == ["order-7:0", "order-7:0"]
