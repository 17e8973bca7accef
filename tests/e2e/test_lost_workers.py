"""Crashes count: real worker processes killed with SIGKILL by what they run.

Two worker processes serve one SQLite file and are restarted whenever they die (as
Kubernetes would). An activity that kills its process is retried by ``max_attempts`` and
then fails the run saying the worker was lost; a run that kills its worker outside any
activity is failed after ``max_recoveries``; the other runs of those workers complete.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from kenning import App, RunStatus

WORKER = Path(__file__).with_name("lost_worker.py")
MAX_RECOVERIES = 3


def spawn(db: Path, worker_id: str, marker: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "sdk")}
    return subprocess.Popen([sys.executable, str(WORKER), str(db), worker_id, str(marker),
                             str(MAX_RECOVERIES)], env=env)


async def test_crashing_activity_and_poison_run(
    tmp_path: Path, processes: list[subprocess.Popen[bytes]]
) -> None:
    db, marker = tmp_path / "lost.db", tmp_path / "marker"
    crashes = 0
    workers: dict[str, subprocess.Popen[bytes]] = {}

    def keep_workers_up() -> None:
        nonlocal crashes
        for name in ("worker-a", "worker-b"):
            proc = workers.get(name)
            if proc is not None and proc.poll() is None:
                continue
            if proc is not None:
                crashes += 1
            workers[name] = spawn(db, f"{name}-{crashes}", marker)
            processes.append(workers[name])

    async with App(str(db), worker=False) as client:
        await client.start("killer", run_id="killer")
        await client.start("poison", run_id="poison")
        keep_workers_up()
        async with asyncio.timeout(60):  # the first crash, then the innocent runs
            while crashes == 0:
                await asyncio.sleep(0.05)
                keep_workers_up()
        fine = [await client.start("fine", i, run_id=f"fine-{i}") for i in range(6)]
        async with asyncio.timeout(90):
            while True:
                keep_workers_up()
                runs = {r: await client.get_run(r) for r in ["killer", "poison", *fine]}
                if all(info.status.finished for info in runs.values()):
                    break
                await asyncio.sleep(0.1)

    attempts = Counter(line.split()[0] for line in marker.read_text().splitlines())
    killer_run, poison_run = runs["killer"], runs["poison"]
    assert killer_run.status is RunStatus.FAILED, killer_run
    assert killer_run.error is not None
    assert "the worker was lost during attempt 2 of 2" in killer_run.error
    assert "ActivityError" in killer_run.error and "failed after 2 attempt(s)" in killer_run.error
    assert attempts["killer"] == 2, "exactly two attempts: each crash counted as one"
    assert [line.split()[1] for line in marker.read_text().splitlines()
            if line.startswith("killer ")] == ["1", "2"], "ctx.attempt is the true number"

    assert poison_run.status is RunStatus.FAILED, poison_run
    assert poison_run.error is not None and "WorkerLost" in poison_run.error
    assert f"failed after {MAX_RECOVERIES} recovery attempts" in poison_run.error
    # its recorded step is replayed, not run again (unless a crash of the killer's hit it)
    assert 1 <= attempts["poison"] <= 2

    for run_id in fine:
        assert runs[run_id].status is RunStatus.COMPLETED, (runs[run_id], crashes)
        assert runs[run_id].result == int(run_id.split("-")[1]) + 2
    # killer: 2 crashes; poison: 1 + MAX_RECOVERIES (fewer when one crash hit both), and
    # nothing crash-loops after its run failed
    assert 1 + MAX_RECOVERIES <= crashes <= 2 + 1 + MAX_RECOVERIES
