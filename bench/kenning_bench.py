#!/usr/bin/env python
"""Kenning driver for the workloads of ../shared/bench/WORKLOADS.md (W1–W5).

    python bench/kenning_bench.py W1 --n 1000 \
        --db 'postgresql://root@/bench?host=/var/run/postgresql' --json out.jsonl
    python bench/kenning_bench.py W2 --db /tmp/bench.db      # SQLite file works too

One process hosts the embedded ``App`` (store, worker and, for W2/W5, the CloudEvents sink
served by ``App.serve``) and this driver; W5's load generator (``ce_load.py``) is a separate
process. Completion is observed with ``App.result`` (the store's in-process FINISHED
notification); "waiting" is ``App.get_run(...).status == waiting_for_event``. Kenning's
shipped defaults are used; logging is at WARNING and the event loop is the standard asyncio
loop (Kenning does not install uvloop).

``common`` comes from ../shared/bench next to this repository, or from
``$KENNING_BENCH_SHARED``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

SHARED = Path(os.environ.get("KENNING_BENCH_SHARED")
              or Path(__file__).resolve().parents[1].parent / "shared" / "bench")
sys.path.insert(0, str(SHARED))

import common  # noqa: E402
from common import now  # noqa: E402

import kenning  # noqa: E402
from kenning import App, RunStatus, WorkflowContext, activity, sleep, wait_event, workflow  # noqa: E402

ENGINE = {"engine": "kenning", "version": kenning.__version__}


def engine_source() -> str:
    """Which engine code ran: ``$KENNING_BENCH_COMMIT`` (set by run.sh for a snapshot), else
    the repository's HEAD, with ``+dirty`` when sdk/ has uncommitted changes."""
    if os.environ.get("KENNING_BENCH_COMMIT"):
        return os.environ["KENNING_BENCH_COMMIT"]
    sdk = Path(kenning.__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "-C", str(sdk), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(sdk), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")
CE_LOAD = SHARED / "ce_load.py"
PEERS_PY = Path(os.environ.get("PEERS_VENV", Path.home() / ".cache" / "kenning-bench-peers")
                ) / "bin" / "python"


@activity
async def inc(ctx: WorkflowContext, y: int) -> int:
    return y + 1


@workflow
async def w1(ctx: WorkflowContext, x: int) -> int:
    for _ in range(3):
        x = await inc(ctx, x)
    return x


@workflow
async def w2(ctx: WorkflowContext, x: int) -> Any:
    await inc(ctx, x)
    event = await wait_event(ctx, "bench.resume")
    return event.data


@workflow
async def w3(ctx: WorkflowContext) -> None:
    await sleep(ctx, 2)


@workflow
async def w4(ctx: WorkflowContext) -> None:
    await wait_event(ctx, "bench.resume")  # no timeout, no activity before the wait


def pcts(lat: list[float]) -> dict[str, Any]:
    return {"p50_ms": common.ms(common.pct(lat, 50)), "p95_ms": common.ms(common.pct(lat, 95)),
            "p99_ms": common.ms(common.pct(lat, 99)), "max_ms": common.ms(max(lat))}


async def all_waiting(app: App, ids: list[str]) -> None:
    """Until the status API reports every run as waiting_for_event (polled at most every 10 ms)."""
    pending = list(ids)
    while pending:
        if (await app.get_run(pending[0])).status is RunStatus.WAITING_FOR_EVENT:
            pending.pop(0)
        else:
            await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_sink(app: App) -> tuple[asyncio.Task[None], str]:
    """``App.serve`` (the CloudEvents sink) as a task of this process; its URL once it answers."""
    port = free_port()
    task = asyncio.create_task(app.serve("127.0.0.1", port), name="bench-sink")
    deadline = now() + 10
    while True:
        if task.done():
            task.result()  # raises what stopped it
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if now() > deadline:
                raise
            await asyncio.sleep(0.02)
            continue
        writer.close()
        return task, f"http://127.0.0.1:{port}/"


async def stop_sink(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def bench_w1(app: App, n: int, a: argparse.Namespace) -> dict[str, Any]:
    async def run(i: int) -> Any:
        return await app.result(await w1.start(app, i))

    t0 = now()
    results = await common.bounded(n, run)  # closed loop: a slot is held until completion
    wall = now() - t0
    return {"ok": results == [i + 3 for i in range(n)], "wall_s": round(wall, 3),
            "runs_per_s": round(n / wall, 1), "activities_per_s": round(3 * n / wall, 1)}


async def bench_w2(app: App, n: int, a: argparse.Namespace) -> dict[str, Any]:
    ids = await common.bounded(n, lambda i: w2.start(app, i))
    await all_waiting(app, ids)
    sink, url = await start_sink(app)
    conn, lat, statuses, ok = common.HttpConn(url), [], set(), True
    t_all = now()
    for i, rid in enumerate(ids):
        # Point-to-point: the `kenningrun` extension addresses the event to this run alone.
        headers, body = common.cloudevent("bench.resume", {"run": i}, kenningrun=rid)
        t0 = now()
        status = await conn.post(headers, body)
        statuses.add(status)
        if status != 202:  # not accepted: the run will not complete, stop here
            ok = False
            break
        ok &= await app.result(rid, timeout=30) == {"run": i}
        lat.append(now() - t0)
    total = now() - t_all
    await conn.close()
    await stop_sink(sink)
    if len(lat) < n:
        return {"ok": False, "delivery": "http-cloudevent", "http_status": sorted(statuses),
                "error": f"sink answered {sorted(statuses)}; {len(lat)} of {n} runs resumed"}
    return {"ok": ok and statuses == {202}, "delivery": "http-cloudevent",
            "http_status": sorted(statuses), **pcts(lat), "total_s": round(total, 3)}


async def bench_w3(app: App, n: int, a: argparse.Namespace) -> dict[str, Any]:
    async def completed_at(rid: str) -> float:
        await app.result(rid)
        return now()

    async def start(i: int) -> tuple[float, asyncio.Task[float]]:
        t = now()
        rid = await w3.start(app)
        return t, asyncio.create_task(completed_at(rid))

    started = await common.bounded(n, start)
    late = [await task - t - 2.0 for t, task in started]
    return {"ok": len(late) == n and min(late) >= 0,
            "p50_late_ms": common.ms(common.pct(late, 50)),
            "p99_late_ms": common.ms(common.pct(late, 99)), "max_late_ms": common.ms(max(late))}


async def pool_bounded(n: int, fn: Any, concurrency: int = common.C_START) -> list[Any]:
    """Like ``common.bounded`` but with ``concurrency`` looping tasks instead of one task per
    call, so the driver itself does not allocate N tasks at once (W4 ``--starter pool``)."""
    results: list[Any] = [await fn(0)] if n else []
    results += [None] * (n - len(results))
    next_i = iter(range(1, n))

    async def loop() -> None:
        for i in next_i:
            results[i] = await fn(i)

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    return results


async def bench_w4(app: App, n: int, a: argparse.Namespace) -> dict[str, Any]:
    bounded = pool_bounded if a.starter == "pool" else common.bounded
    base = common.rss_mib()
    t0 = now()
    ids = await bounded(n, lambda i: w4.start(app))
    await all_waiting(app, ids)
    start_s = now() - t0
    held = app.worker.active_runs if app.worker else None
    await asyncio.sleep(2)
    rss = common.rss_mib()
    return {"ok": True, "baseline_rss_mib": round(base, 1), "rss_mib": round(rss, 1),
            "kib_per_run": round((rss - base) * 1024 / n, 2), "start_s": round(start_s, 2),
            "runs_held_by_worker": held}


async def bench_w5(app: App, n: int, a: argparse.Namespace) -> dict[str, Any]:
    load_py = a.load_python or (str(PEERS_PY) if PEERS_PY.exists() else sys.executable)
    stored_before = await app.store.count_events()
    sink, url = await start_sink(app)
    proc = await asyncio.create_subprocess_exec(
        load_py, str(CE_LOAD), "--url", url, "--clients", str(n), "--seconds", "10",
        stdout=asyncio.subprocess.PIPE)
    load = json.loads((await proc.communicate())[0].splitlines()[-1])
    t_stop = now()
    stored_at_stop = await app.store.count_events() - stored_before
    # Drain: wait until the count has not changed for 5 s (nothing should still be in flight:
    # the sink answers 202 only after the commit).
    count, last_change = stored_at_stop, now()
    while now() - last_change < 5:
        await asyncio.sleep(0.2)
        if (c := await app.store.count_events() - stored_before) != count:
            count, last_change = c, now()
    await stop_sink(sink)
    lost = load["accepted"] - count
    # durable_on_accept (from the source): the sink awaits Store.accept_events, which returns
    # after the group commit, and only then answers 202.
    return {"ok": load["errors"] == 0 and lost == 0, "durable_on_accept": True, **load,
            "stored_at_stop": stored_at_stop, "stored_after_drain": count,
            "lost_after_accept": lost, "drain_s": round(last_change - t_stop, 2),
            "load_python": "peers-venv" if load_py == str(PEERS_PY) else load_py}


WORKLOADS = {"W1": (bench_w1, 1000), "W2": (bench_w2, 200), "W3": (bench_w3, 500),
             "W4": (bench_w4, 5000), "W5": (bench_w5, 32)}


def store_label(db: str) -> str:
    if db.startswith(("postgresql://", "postgres://")):
        return "postgresql-unix-socket" if "host=/" in db else "postgresql-tcp"
    return "sqlite"


async def main(a: argparse.Namespace) -> None:
    fn, default_n = WORKLOADS[a.workload]
    n = a.n or default_n
    source = engine_source()  # before the clock starts
    load_before = os.getloadavg()[0]  # the machine is shared: a noise indicator per line
    app = App(database=a.db, worker_id=f"bench-{os.getpid()}", workflows=[w1, w2, w3, w4])
    await app.open()
    try:
        result = await asyncio.wait_for(fn(app, n, a), a.timeout)
    except TimeoutError:
        result = {"ok": False, "error": f"timeout after {a.timeout}s"}
    except Exception as exc:  # report, do not hide: one line per run
        logging.exception("workload failed")
        result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    config = {"store": store_label(a.db)}
    if a.starter != "common":
        config["starter"] = a.starter
    common.emit({**ENGINE, "workload": a.workload, "n": n, "config": config, **result,
                 "engine_source": source, "loadavg_1m_before": round(load_before, 2),
                 "loadavg_1m_after": round(os.getloadavg()[0], 2)}, a.json)
    with contextlib.suppress(BaseException):
        await asyncio.wait_for(app.close(), 10)
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: W4 leaves thousands of waiting runs behind


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("workload", choices=WORKLOADS)
    p.add_argument("--n", type=int, help="runs (W5: concurrent clients)")
    p.add_argument("--db", required=True, help="postgresql://... DSN or a SQLite file path")
    p.add_argument("--json", help="append the result line to this file")
    p.add_argument("--timeout", type=float, default=150)
    p.add_argument("--load-python", help="python for ce_load.py (W5); default the peers' venv, "
                   "so every engine's load generator runs on the same interpreter and uvloop")
    p.add_argument("--starter", choices=["common", "pool"], default="common",
                   help="W4 only: common.bounded (one task per start, as the peers) or a pool "
                   "of 64 looping tasks (to separate the driver's own RSS from the engine's)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(args))
