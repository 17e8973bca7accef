"""The operator's grouped counts at scale (PostgreSQL): both read the covering index of
unfinished runs (``runs_unfinished_counts``), never the table, and sort no more than their
groups. On 100,000 unfinished runs with inputs of a realistic size (a table several times
the index), as planned for the values given and as a prepared statement (generic plan)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from kenning.core.models import BuildCount, RunCount
from kenning.stores import postgres_sql as sql
from kenning.stores import run_scans as scans
from kenning.stores.postgres import PostgresStore
from tests.pg_server import PgServer
from tests.store.conftest import loaded_database

UNFINISHED = 100_000
NOW = time.time()
# 100,000 unfinished runs (85 % wait for an event, 8 % for a timer, an eighth of those due,
# 4 % run, 3 % pending) and 20,000 finished, in 4 namespaces, 10 workflows, 3 builds, a pool
# for every fifth; each with an input of about 200 bytes.
_LOAD = f"""
SET synchronous_commit = on;
INSERT INTO runs (run_id, namespace, workflow, input, status, created_at, pool, build_id,
    wake_at, lease_owner, lease_expires)
SELECT 'run-' || n, 'team-' || (n % 4), 'order_workflow_' || (n % 10),
    '[{{"order_id": "ORD-' || lpad(n::text, 9, '0') || '", "items": "'
        || repeat('x', 160) || '"}}]',
    CASE WHEN n > {UNFINISHED} THEN 'completed' WHEN n % 100 < 85 THEN 'waiting_for_event'
         WHEN n % 100 < 93 THEN 'waiting_for_timer' WHEN n % 100 < 97 THEN 'running'
         ELSE 'pending' END,
    n, CASE WHEN n % 5 = 0 THEN 'gpu' END, 'build-' || (n % 3),
    CASE WHEN n <= {UNFINISHED} AND n % 100 BETWEEN 85 AND 92 THEN
         CASE WHEN n % 800 = 85 THEN {NOW} - 60 ELSE {NOW} + 86400 END END,
    CASE WHEN n <= {UNFINISHED} AND n % 100 BETWEEN 93 AND 96 THEN 'worker-1' END,
    CASE WHEN n <= {UNFINISHED} AND n % 100 BETWEEN 93 AND 96 THEN {NOW} + 30 END
FROM generate_series(1, {UNFINISHED + 20_000}) AS n;
"""
# the same counts, plainly (what the statements must answer)
_PLAIN_BY_BUILD = (
    "SELECT namespace, pool, workflow, build_id, upgrade, count(*) AS unfinished,"
    " count(*) FILTER (WHERE status IN ('pending', 'running') OR wake_at <= $1) AS runnable"
    " FROM runs WHERE status NOT IN ('completed', 'failed', 'cancelled')"
    " GROUP BY namespace, pool, workflow, build_id, upgrade"
)
_PLAIN_ACTIVE = (
    "SELECT namespace, workflow, pool, count(*) AS n FROM runs"
    " WHERE status IN ('pending', 'running') OR (status IN ('waiting_for_event',"
    " 'waiting_for_timer') AND wake_at <= $1) GROUP BY namespace, workflow, pool"
)
GROUPS = 1000  # more (status, group) rows than the load has: a sort of more is of runs


@pytest.fixture(scope="module")
def loaded(pg_server: PgServer) -> Iterator[str]:
    """A database migrated, loaded, vacuumed (visibility map set) and analyzed."""
    with loaded_database(pg_server, _LOAD, "VACUUM ANALYZE runs") as dsn:
        yield dsn


def _rows(nodes: list[dict[str, Any]]) -> int:
    """Rows the nodes read (a parallel node's rows are an average over its loops)."""
    return sum(round(n["Actual Rows"] * n.get("Actual Loops", 1)) for n in nodes)


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan] + [n for child in plan.get("Plans", ()) for n in _nodes(child)]


async def _plans(dsn: str, query: str, *args: Any) -> list[list[dict[str, Any]]]:
    """The nodes of the custom and of the generic plan of ``query``, run (EXPLAIN ANALYZE)."""
    conn = await asyncpg.connect(dsn)
    try:
        out = []
        for mode in ("force_custom_plan", "force_generic_plan"):
            await conn.execute(f"SET plan_cache_mode = {mode}")
            text = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", *args)
            out.append(_nodes(json.loads(text)[0]["Plan"]))
        return out
    finally:
        await conn.close()


def _check_reads_the_index(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fail unless ``runs`` is read only through indexes, its many rows only through the
    covering index (index-only, no heap), and nothing sorts more than the groups; return
    the scans of the covering index."""
    text = json.dumps(nodes)
    for node in nodes:
        assert not (node["Node Type"] == "Seq Scan" and node.get("Relation Name") == "runs"), text
        if node["Node Type"] == "Sort":
            assert _rows([node]) <= GROUPS, text
        if node.get("Relation Name") == "runs" and node.get("Index Name") != \
                "runs_unfinished_counts":
            rows = _rows([node])
            assert rows <= 2_000, f"{node['Node Type']} reads {rows} rows of runs: {text}"
    covering = [n for n in nodes if n.get("Index Name") == "runs_unfinished_counts"]
    assert covering and all(n["Node Type"] == "Index Only Scan" for n in covering), text
    assert sum(n.get("Heap Fetches", 0) for n in covering) == 0, text
    return covering


async def test_count_by_build_reads_the_covering_index_only(loaded: str) -> None:
    for nodes in await _plans(loaded, sql.UNFINISHED_BY_BUILD, NOW):
        covering = _check_reads_the_index(nodes)
        assert abs(_rows(covering) - UNFINISHED) <= 3  # loops round their average


async def test_count_of_active_runs_reads_runnable_ranges_of_the_index(loaded: str) -> None:
    for nodes in await _plans(loaded, scans.PG_COUNT_ACTIVE, NOW):
        covering = _check_reads_the_index(nodes)
        # the pending and the running runs, each a range of the index (not all of it)
        assert abs(_rows(covering) - 7_000) <= 3
        assert all("Index Cond" in n for n in covering), json.dumps(covering)


async def test_the_counts_are_those_of_the_plain_queries(loaded: str) -> None:
    store = PostgresStore(loaded)
    await store.open()
    conn = await asyncpg.connect(loaded)
    try:
        for due in (NOW, None):
            got = await store.count_unfinished_by_build(due_before=due)
            want = [BuildCount(r["namespace"], r["pool"], r["workflow"], r["build_id"],
                               r["upgrade"], r["unfinished"], r["runnable"])
                    for r in await conn.fetch(_PLAIN_BY_BUILD, due)]
            key = lambda c: (c.namespace, c.pool or "", c.workflow, c.build_id or "")  # noqa: E731
            assert sorted(got, key=key) == sorted(want, key=key)
            assert sum(c.unfinished for c in got) == UNFINISHED
        active = await store.count_active_runs(wake_before=NOW)
        plain = [RunCount(r["namespace"], r["workflow"], r["pool"], r["n"])
                 for r in await conn.fetch(_PLAIN_ACTIVE, NOW)]
        order = lambda c: (c.namespace, c.workflow, c.pool or "")  # noqa: E731
        assert sorted(active, key=order) == sorted(plain, key=order)
        assert sum(c.count for c in active) == 3_000 + 4_000 + 1_000 // 8
    finally:
        await conn.close()
        await store.close()
