#!/usr/bin/env python
"""W6: many waiting runs. Event → resume latency, sink ingest, store bytes and memory as the
waiting set grows (1,000 → 10,000 → 100,000 [→ 1,000,000]).

    python bench/w6_bench.py --db 'postgresql://...' --steps 1000,10000,100000 --json out.jsonl
    python bench/w6_bench.py --db ... --one-type --steps 1000,10000,20000   # one hot type
    python bench/w6_bench.py start --db ... --n 1000000    # start_many of a million runs

One process hosts the embedded ``App`` (store, worker, CloudEvents sink on a free port) and
this driver; the ingest load is a second process (this file with ``load``). Runs wait over
1,000 event types: types 0-249 for runs addressed by id (``kenningrun``), the others for
runs matched on ``data.order_id``, ``subject`` or the extension ``orderref`` (by type).
At each step the driver tops the waiting set up, then:

- resumes ``--samples`` addressed and as many matched runs, one event at a time over HTTP,
  each timed from the POST until the run is observed completed (``App.result``);
- runs the load process for ``--load-seconds``: 32 keep-alive clients posting events of a
  matched type whose ``data.order_id`` matches no run (so every event does its index
  lookups and wakes nothing); reports accepted events per second;
- reads store bytes (``pg_total_relation_size`` of every Kenning table with its indexes but
  ``events`` and ``outbox``, which hold what the sink took in) per waiting run, each
  table's size, and this process's RSS (worker, sink and driver; the operator is not
  part of this workload).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import asyncpg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import kenning_bench as kb  # noqa: E402  (common, the sink helpers, engine_source)
from kenning import App, Client, WorkflowContext, wait_event, workflow  # noqa: E402
from kenning_bench import common  # noqa: E402

TYPES = 1000
ADDRESSED_TYPES = 250
LOAD_TYPE = next(f"w6.t{t:03}" for t in range(ADDRESSED_TYPES, TYPES) if t % 3 == 0)
TABLES = ("runs", "history", "events", "consumptions", "outbox", "wait_keys", "wait_paths")


def how_for(type_index: int) -> str:
    """How runs waiting on this type are found: by id, or by which match key."""
    if type_index < ADDRESSED_TYPES:
        return "id"
    return ("data", "subject", "ext")[type_index % 3]


ONE_TYPE = False  # --one-type: every run waits for order.paid, matched on data.order_id


def spec(i: int) -> tuple[str, str, str]:
    """Run number ``i``: (event type, how it is found, its key)."""
    if ONE_TYPE:
        return "order.paid", "data", f"k-{i}"
    t = i % TYPES
    return f"w6.t{t:03}", how_for(t), f"k-{i}"


@workflow
async def w6(ctx: WorkflowContext, type: str, how: str, key: str) -> Any:
    """Wait for one event of ``type``, addressed to this run or matched on ``key``."""
    match = {"data": {"data.order_id": key}, "subject": {"subject": key},
             "ext": {"orderref": key}}.get(how)
    event = await wait_event(ctx, type, match=match)
    return event.data


def event_for(i: int, run_id: str) -> tuple[dict[str, str], bytes]:
    """The CloudEvent that resumes run ``i`` alone."""
    type_, how, key = spec(i)
    data = {"order_id": key if how == "data" else "other", "run": i}
    if how == "id":
        return common.cloudevent(type_, data, kenningrun=run_id)
    if how == "subject":
        return common.cloudevent(type_, data, subject=key)
    if how == "ext":
        return common.cloudevent(type_, data, orderref=key)
    return common.cloudevent(type_, data)


async def count_waiting(pg: Any) -> int:
    return int(await pg.fetchval("SELECT count(*) FROM runs WHERE status = 'waiting_for_event'"))


async def store_bytes(pg: Any) -> dict[str, int]:
    """``pg_total_relation_size`` (table, indexes, TOAST) of each Kenning table."""
    present = [t for t in TABLES if await pg.fetchval("SELECT to_regclass($1)", t)]
    rows = await pg.fetch("SELECT t, pg_total_relation_size(t::regclass) AS n"
                          " FROM unnest($1::text[]) AS t", present)
    return {row["t"]: int(row["n"]) for row in rows}


async def start_runs(app: App, first: int, count: int) -> list[str]:
    """Start runs ``first .. first+count-1`` (``start_many`` in chunks where it exists)."""
    ids = [f"w6-{i}" for i in range(first, first + count)]
    args = [spec(i) for i in range(first, first + count)]
    if hasattr(Client, "start_many"):
        for at in range(0, count, 10_000):
            await app.start_many(w6, args[at:at + 10_000], run_ids=ids[at:at + 10_000])
    else:  # an engine without start_many (for comparing with older commits)
        await common.bounded(count, lambda j: app.start(w6, *args[j], run_id=ids[j]))
    return ids


async def fill(app: App, pg: Any, target: int, started: int) -> tuple[int, float]:
    """Start runs until ``target`` wait; returns (runs started so far, seconds taken)."""
    t0 = common.now()
    missing = target - await count_waiting(pg)
    if missing > 0:
        await start_runs(app, started, missing)
        started += missing
    while await count_waiting(pg) < target:  # noqa: ASYNC110  (the database is the signal)
        await asyncio.sleep(0.5)
    return started, common.now() - t0


async def resume_samples(app: App, url: str, indices: list[int]) -> tuple[list[float], bool]:
    conn, lat, ok = common.HttpConn(url), [], True
    for i in indices:
        headers, body = event_for(i, f"w6-{i}")
        t0 = common.now()
        status = await conn.post(headers, body)
        if status != 202:
            ok = False
            break
        result = await app.result(f"w6-{i}", timeout=60)
        lat.append(common.now() - t0)
        ok &= isinstance(result, dict) and result.get("run") == i
    await conn.close()
    return lat, ok


async def ingest(url: str, seconds: float, type_: str) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "load", "--url", url, "--seconds", str(seconds),
        "--type", type_,
        stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return dict(json.loads(out.splitlines()[-1]))


def pick(started: int, how: str, n: int, used: set[int]) -> list[int]:
    """``n`` waiting runs found by ``how`` ("id" or matched), spread over the started ones."""
    chosen: list[int] = []
    step = max(1, started // (n * 4))
    for i in range(0, started, step):
        if i in used or (spec(i)[1] == "id") != (how == "id"):
            continue
        chosen.append(i)
        used.add(i)
        if len(chosen) == n:
            break
    return chosen


async def run_step(app: App, pg: Any, url: str, target: int, started: int, used: set[int],
                   a: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    started, fill_s = await fill(app, pg, target, started)
    await pg.execute("ANALYZE")
    waiting = await count_waiting(pg)
    sizes = await store_bytes(pg)
    # the events table holds what the sink took in (kept 24 h whether or not runs wait,
    # and the previous steps' ingest load): reported apart from the bytes of waiting runs
    run_bytes = sum(n for t, n in sizes.items() if t not in ("events", "outbox"))
    addressed: list[float] = []
    ok_a = True
    if not ONE_TYPE:
        addressed, ok_a = await resume_samples(app, url, pick(started, "id", a.samples, used))
    matched, ok_m = await resume_samples(app, url, pick(started, "match", a.samples, used))
    load = await ingest(url, a.load_seconds, spec(0)[0] if ONE_TYPE else LOAD_TYPE)
    line = {"waiting": waiting, "fill_s": round(fill_s, 1),
            "addressed": kb.pcts(addressed) if addressed else None, "matched": kb.pcts(matched),
            "ingest_per_s": load["accepted_per_s"], "ingest_p99_ms": load["p99_ms"],
            "ingest_errors": load["errors"],
            "store_bytes_per_waiting_run": round(run_bytes / max(waiting, 1)),
            "table_mib": {t: round(n / 2**20, 2) for t, n in sizes.items()},
            "rss_mib": round(common.rss_mib(), 1), "ok": ok_a and ok_m and not load["errors"]}
    return started, line


async def main(a: argparse.Namespace) -> None:
    source = kb.engine_source()
    app = App(database=a.db, worker_id=f"w6-{os.getpid()}", workflows=[w6])
    await app.open()
    pg = await asyncpg.connect(a.db)
    sink, url = await kb.start_sink(app)
    started, used = 0, set[int]()
    try:
        for target in (int(s) for s in a.steps.split(",")):
            started, line = await run_step(app, pg, url, target, started, used, a)
            common.emit({**kb.ENGINE, "workload": "W6", "n": target, **line,
                         "config": {"store": kb.store_label(a.db),
                                    "types": 1 if ONE_TYPE else TYPES,
                                    "samples": a.samples},
                         "engine_source": source,
                         "loadavg_1m": round(os.getloadavg()[0], 2)}, a.json)
    finally:
        await kb.stop_sink(sink)
        await pg.close()
        sys.stdout.flush()
        os._exit(0)  # skip teardown: up to a million runs are left waiting


async def load(url: str, seconds: float, type_: str, clients: int = 32) -> None:
    """The ingest load: events of a matched type whose key matches no waiting run."""
    counts = {"accepted": 0, "rejected": 0, "errors": 0}
    lat: list[float] = []
    t0 = common.now()
    deadline = t0 + seconds

    async def client(c: int) -> None:
        conn, n = common.HttpConn(url), 0
        while common.now() < deadline:
            n += 1
            headers, body = common.cloudevent(type_, {"order_id": f"none-{c}-{n}"})
            t = common.now()
            try:
                status = await conn.post(headers, body)
            except OSError:
                counts["errors"] += 1
                continue
            lat.append(common.now() - t)
            counts["accepted" if 200 <= status < 300 else "rejected"] += 1
        await conn.close()

    await asyncio.gather(*(client(c) for c in range(clients)))
    elapsed = common.now() - t0
    print(json.dumps({"accepted_per_s": round(counts["accepted"] / elapsed, 1),
                      "p50_ms": common.ms(common.pct(lat, 50)),
                      "p99_ms": common.ms(common.pct(lat, 99)), **counts}))


async def start_only(db: str, n: int, json_path: str | None) -> None:
    """Target 4: time ``start_many`` of ``n`` runs (no worker, so they stay pending)."""
    from kenning.stores import open_store

    store = open_store(db)
    await store.open()
    client = Client(store)
    t0 = common.now()
    for at in range(0, n, 10_000):
        count = min(10_000, n - at)
        await client.start_many(w6, [spec(i) for i in range(at, at + count)],
                                run_ids=[f"s-{i}" for i in range(at, at + count)])
    wall = common.now() - t0
    await store.close()
    common.emit({**kb.ENGINE, "workload": "W6-start", "n": n, "ok": True,
                 "wall_s": round(wall, 1), "runs_per_s": round(n / wall),
                 "engine_source": kb.engine_source(),
                 "loadavg_1m": round(os.getloadavg()[0], 2)}, json_path)


if __name__ == "__main__":
    if sys.argv[1:2] == ["start"]:
        p = argparse.ArgumentParser()
        p.add_argument("mode")
        p.add_argument("--db", required=True)
        p.add_argument("--n", type=int, default=1_000_000)
        p.add_argument("--json")
        sa = p.parse_args()
        asyncio.run(start_only(sa.db, sa.n, sa.json))
        sys.exit(0)
    if sys.argv[1:2] == ["load"]:
        p = argparse.ArgumentParser()
        p.add_argument("mode")
        p.add_argument("--url", required=True)
        p.add_argument("--seconds", type=float, default=5)
        p.add_argument("--type", default=LOAD_TYPE)
        la = p.parse_args()
        asyncio.run(load(la.url, la.seconds, la.type))
        sys.exit(0)
    p = argparse.ArgumentParser()
    p.add_argument("--db", required=True, help="postgresql://... DSN of an empty database")
    p.add_argument("--steps", default="1000,10000,100000",
                   help="waiting-set sizes, comma-separated (add 1000000 for the full run)")
    p.add_argument("--samples", type=int, default=100,
                   help="events timed per step, for addressed and for matched runs each")
    p.add_argument("--load-seconds", type=float, default=5)
    p.add_argument("--one-type", action="store_true",
                   help="every run waits for order.paid matched on data.order_id (the worst "
                   "case of a scan per type; no addressed runs)")
    p.add_argument("--json", help="append the result lines to this file")
    args = p.parse_args()
    ONE_TYPE = args.one_type
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(args))
