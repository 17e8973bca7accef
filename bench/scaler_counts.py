"""The operator's two grouped counts at scale: ``count_unfinished_by_build`` and
``count_active_runs``, each called every scaler tick (2 s).

Starts a throwaway PostgreSQL (``tests/pg_server.py``), starts runs through the store's
``create_runs`` (what ``Client.start_many`` calls) in batches, and at each size measures
the milliseconds per call of both counts, with their plans:

Each run's input is an order of about ``--input-bytes`` (200) bytes of JSON.

- ``started``: every run pending, as ``start_many`` leaves them;
- ``waiting``: the same runs after most began to wait (85 % for an event, 8 % for a timer,
  1 % of those due, 4 % running, 3 % pending), vacuumed as autovacuum would leave them.

    .venv/bin/python bench/scaler_counts.py --sizes 100000 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.pg_server import PgServer

from kenning.core.models import NewRun
from kenning.stores import postgres_sql as sql
from kenning.stores import run_scans as scans
from kenning.stores.postgres import PostgresStore

BATCH = 10_000
CALLS = 15
# most runs wait: for an event (no deadline), for a timer (some due), a few run or wait
_WAIT = """
UPDATE runs SET
    status = CASE WHEN n % 100 < 85 THEN 'waiting_for_event'
                  WHEN n % 100 < 93 THEN 'waiting_for_timer'
                  WHEN n % 100 < 97 THEN 'running' ELSE 'pending' END,
    wake_at = CASE WHEN n % 100 BETWEEN 85 AND 92 THEN
                  CASE WHEN n % 800 = 85 THEN 0 ELSE 1e12 END END,
    lease_owner = CASE WHEN n % 100 BETWEEN 93 AND 96 THEN 'worker-' || (n % 8) END,
    lease_expires = CASE WHEN n % 100 BETWEEN 93 AND 96 THEN 1e12 END,
    build_id = 'build-2024.' || (n % 3)
FROM (SELECT run_id AS id, substr(run_id, 5)::int AS n FROM runs) AS k
WHERE runs.run_id = k.id AND status = 'pending'
"""


def _input(i: int, size: int) -> str:
    """A workflow's arguments of about ``size`` bytes (an order with a few items)."""
    order = {"order_id": f"ORD-{i:09d}", "customer": f"customer-{i % 9973:05d}", "items": []}
    while len(json.dumps([order])) < size:
        order["items"].append({"sku": f"SKU-{len(order['items']):04d}", "quantity": 1,
                               "price": 9.99})
    return json.dumps([order])


async def start(store: PostgresStore, first: int, last: int, input_bytes: int) -> float:
    """Start runs ``first``..``last`` (pending) through ``create_runs``; seconds taken."""
    began = time.monotonic()
    for low in range(first, last + 1, BATCH):
        await store.create_runs([
            NewRun(run_id=f"run-{i}", namespace=f"team-{i % 4}",
                   workflow=f"order_workflow_{i % 10}", input=_input(i, input_bytes),
                   pool="gpu" if i % 5 == 0 else None)
            for i in range(low, min(low + BATCH, last + 1))])
    return time.monotonic() - began


async def timed(call: Any) -> float:
    """Median milliseconds per call (after one warm-up)."""
    await call()
    took = []
    for _ in range(CALLS):
        began = time.perf_counter()
        await call()
        took.append((time.perf_counter() - began) * 1000)
    return statistics.median(took)


def _nodes(plan: dict[str, Any]) -> list[str]:
    name = plan["Node Type"]
    if "Strategy" in plan and plan["Strategy"] != "Plain":
        name = f"{plan['Strategy']} {name}"
    if "Index Name" in plan:
        name += f" {plan['Index Name']}"
    if "Heap Fetches" in plan:
        name += f" (heap fetches {plan['Heap Fetches']})"
    return [name] + [n for child in plan.get("Plans", ()) for n in _nodes(child)]


async def plan_of(conn: Any, query: str, *args: Any) -> str:
    """The plan's nodes, top down, and the buffers it touched."""
    text = await conn.fetchval(f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {query}", *args)
    top = json.loads(text)[0]["Plan"]
    pages = top.get("Shared Hit Blocks", 0) + top.get("Shared Read Blocks", 0)
    return f"{' > '.join(_nodes(top))}; {pages} pages"


async def vacuum(conn: Any) -> None:
    """VACUUM ANALYZE the runs, as autovacuum leaves them. The test server commits
    asynchronously, and a row's visibility is only marked once its commit is flushed: wait
    for the WAL writer first, or the visibility map stays empty."""
    await asyncio.sleep(1.0)
    await conn.execute("VACUUM ANALYZE runs")


async def measure(store: PostgresStore, conn: Any, size: int, shape: str) -> None:
    by_build = await timed(lambda: store.count_unfinished_by_build(due_before=time.time()))
    active = await timed(lambda: store.count_active_runs(wake_before=time.time()))
    now = time.time()
    print(f"{size:>9,} {shape:<8} count_unfinished_by_build {by_build:8.1f} ms/call"
          f"  count_active_runs {active:8.1f} ms/call", flush=True)
    print(f"    by build: {await plan_of(conn, sql.UNFINISHED_BY_BUILD, now)}")
    print(f"    active:   {await plan_of(conn, scans.PG_COUNT_ACTIVE, now)}", flush=True)


async def main(sizes: list[int], input_bytes: int) -> None:
    server = PgServer()
    server.start()
    try:
        for size in sizes:
            name = server.create_database()
            dsn = server.dsn(name)
            store = PostgresStore(dsn, max_batch=4)
            await store.open()
            conn = await asyncpg.connect(dsn)
            try:
                took = await start(store, 1, size, input_bytes)
                print(f"{size:,} runs started in {took:.0f} s", flush=True)
                await vacuum(conn)
                await measure(store, conn, size, "started")
                await conn.execute(_WAIT)
                await vacuum(conn)
                await measure(store, conn, size, "waiting")
            finally:
                await conn.close()
                await store.close()
                server.drop_database(name)
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--input-bytes", type=int, default=200,
                        help="size of each run's input (its arguments as JSON)")
    args = parser.parse_args()
    asyncio.run(main(args.sizes, args.input_bytes))
