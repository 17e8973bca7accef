"""Nothing hot scans: EXPLAIN every hot statement on a database of 100,000 runs.

The rows are bulk-loaded with ``generate_series`` in the shapes the store writes (finished
runs with history, runs waiting for events with their wait keys, timers, pending and running
runs, kept and addressed events), then ANALYZEd. Each plan is checked for a sequential scan
of a large table, both as planned for the values given (custom plan) and as a prepared
statement planned once for any values (generic plan), which is what asyncpg ends up with.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from kenning.core.models import ClaimScope
from kenning.stores import postgres_match as match_sql
from kenning.stores import postgres_retention as retention_sql
from kenning.stores import postgres_sql as sql
from kenning.stores.claim_scope import postgres_scope_args
from tests.pg_server import PgServer
from tests.store.conftest import loaded_database

RUNS = 100_000
MOST_ROWS = 5_000  # every population of the load (pending, waiting, finished) is larger
LARGE = ("runs", "history", "events", "consumptions", "wait_keys", "outbox", "chapters",
         "history_chapters")
NOW = time.time()

# Runs 1-50,000 finished, 50,001-80,000 wait for an event (matched on data.order_id; a third
# for ``order.paid``, the others over 1,000 types; every tenth with a timeout), 80,001-90,000
# wait for a timer, 90,001-99,000 are pending and the rest running; runs 90,001-99,500 are
# children of waiting runs. The waiting runs continued as new twice (two closed chapters).
# Runs 50,001-55,000 wait on a second event wait (seq 3) with the same keys as their first;
# the wait of runs 55,001-60,000 takes ``order.refunded`` as well.
_LOAD = f"""
INSERT INTO runs (run_id, namespace, workflow, input, status, created_at, updated_at,
    started_at, finished_at, result, lease_owner, lease_expires, epoch, wait_seq, wait_kind,
    wake_at, wait_type, wait_match, wait_started, parent_run_id, wait_ordinal)
SELECT 'run-' || i, 'default', 'wf' || (i % 10), '["order-' || i || '"]',
    CASE WHEN i <= 50000 THEN 'completed' WHEN i <= 80000 THEN 'waiting_for_event'
         WHEN i <= 90000 THEN 'waiting_for_timer' WHEN i <= 99000 THEN 'pending'
         ELSE 'running' END,
    {NOW} - 86400 * 60 + i, {NOW} - 100, {NOW} - 86400 * 60 + i,
    CASE WHEN i <= 50000 THEN {NOW} - 86400 * 60 + i + 10 END,
    CASE WHEN i <= 50000 THEN '1' END,
    CASE WHEN i > 99000 THEN 'worker-' || (i % 4) END,
    CASE WHEN i > 99000 THEN {NOW} + 30 END, 1,
    CASE WHEN i > 50000 AND i <= 90000 THEN 2 END,
    CASE WHEN i > 50000 AND i <= 80000 THEN 'event' WHEN i > 80000 AND i <= 90000 THEN 'timer'
         END,
    CASE WHEN (i > 50000 AND i <= 80000 AND i % 10 = 0) OR (i > 80000 AND i <= 90000)
         THEN {NOW} + i END,
    CASE WHEN i > 50000 AND i <= 80000 THEN {{type}} END,
    CASE WHEN i > 50000 AND i <= 80000 THEN '{{"data.order_id": "order-' || i || '"}}' END,
    CASE WHEN i > 50000 AND i <= 90000 THEN {NOW} - 100 END,
    CASE WHEN i > 90000 AND i <= 99500 THEN 'run-' || (i - 40000) END,
    CASE WHEN i > 50000 AND i <= 90000 THEN 2 END
FROM generate_series(1, {RUNS}) AS i;
INSERT INTO history (run_id, seq, kind, name, value, recorded_at)
SELECT 'run-' || i, s, 'activity', 'step' || s, '{{"ok": true}}', {NOW} - 100
FROM generate_series(1, 90000) AS i, generate_series(0, 2) AS s;
INSERT INTO wait_keys (namespace, event_type, path, value, run_id, seq, nkeys)
SELECT 'default', {{type}}, 'data.order_id', '"order-' || i || '"', 'run-' || i, 2, 1
FROM generate_series(50001, 80000) AS i;
INSERT INTO wait_keys (namespace, event_type, path, value, run_id, seq, nkeys)
SELECT 'default', {{type}}, 'data.order_id', '"order-' || i || '"', 'run-' || i, 3, 1
FROM generate_series(50001, 55000) AS i;
INSERT INTO wait_keys (namespace, event_type, path, value, run_id, seq, nkeys)
SELECT 'default', 'order.refunded', 'data.order_id', '"order-' || i || '"', 'run-' || i, 2, 1
FROM generate_series(55001, 60000) AS i;
INSERT INTO wait_paths (namespace, event_type, path)
SELECT 'default', 'type.' || t, 'data.order_id' FROM generate_series(0, 999) AS t
UNION ALL SELECT 'default', 'order.paid', 'data.order_id'
UNION ALL SELECT 'default', 'order.refunded', 'data.order_id';
INSERT INTO chapters (run_id, chapter, namespace, input, closed_at, steps)
SELECT 'run-' || i, c, 'default', '[]', {NOW} - 86400 * 60 + i + c, 3
FROM generate_series(50001, 80000) AS i, generate_series(0, 1) AS c;
INSERT INTO history_chapters (run_id, chapter, seq, kind, name, value, recorded_at)
SELECT 'run-' || i, c, s, 'activity', 'step' || s, '{{"ok": true}}', {NOW} - 100
FROM generate_series(50001, 80000) AS i, generate_series(0, 1) AS c, generate_series(0, 2) s;
INSERT INTO events (namespace, source, id, type, target_run, record, received_at, expires_at)
SELECT 'default', '/load', 'ev-' || i, 'type.' || (i % 1000),
    CASE WHEN i % 2 = 0 THEN 'run-' || (50000 + i) END, '{{}}', {NOW} - i, {NOW} + 86400 - i
FROM generate_series(1, 50000) AS i;
INSERT INTO consumptions (run_id, event_pk)
SELECT 'run-' || i, i FROM generate_series(1, 50000) AS i;
INSERT INTO outbox (run_id, namespace, record, next_attempt_at, created_at)
SELECT 'run-' || i, 'default', '{{}}', {NOW} + i, {NOW} FROM generate_series(1, 20000) AS i;
ANALYZE;
""".replace("{type}", "CASE WHEN i % 3 = 0 THEN 'order.paid' ELSE 'type.' || (i % 1000) END")


@pytest.fixture(scope="module")
def loaded(pg_server: PgServer) -> Iterator[str]:
    """A database of 100,000 runs in every state, migrated, loaded and analyzed."""
    with loaded_database(pg_server, _LOAD) as dsn:
        yield dsn


def scans(plan: dict[str, Any]) -> list[str]:
    """The large tables a plan scans: read sequentially, or more than ``MOST_ROWS`` rows of
    them read by one node (an index walked end to end is a scan too)."""
    found = []
    table = plan.get("Relation Name")
    if table in LARGE:
        read = (plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)
                + plan.get("Rows Removed by Index Recheck", 0)) * plan.get("Actual Loops", 1)
        if plan.get("Node Type") == "Seq Scan":
            found.append(f"Seq Scan on {table}")
        elif read > MOST_ROWS:
            found.append(f"{plan.get('Node Type')} on {table} reading {read} rows")
    for child in plan.get("Plans", ()):
        found += scans(child)
    return found


async def assert_no_scan(dsn: str, query: str, *args: Any) -> None:
    """EXPLAIN ANALYZE ``query`` (custom and generic plan, rolled back) and fail when it
    scans a large table."""
    conn = await asyncpg.connect(dsn)
    try:
        for mode in ("force_custom_plan", "force_generic_plan"):
            await conn.execute(f"SET plan_cache_mode = {mode}")
            tx = conn.transaction()
            await tx.start()
            try:
                text = await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {query}", *args)
            finally:
                await tx.rollback()
            [top] = json.loads(text)
            found = scans(top["Plan"])
            assert not found, (f"{mode}: {found} in {query}:\n"
                               + json.dumps(top["Plan"], indent=1)[:4000])
    finally:
        await conn.close()


def test_the_check_sees_scans(loaded: str) -> None:
    for query, args in (("SELECT * FROM runs WHERE input = $1", ["x"]),
                        ("SELECT * FROM runs WHERE created_at > $1 AND input = 'x'"
                         " ORDER BY created_at LIMIT 1", [0.0])):
        with pytest.raises(AssertionError, match="on runs"):
            asyncio.run(assert_no_scan(loaded, query, *args))


WAIT = [2, "event", None, "type.7", '{"data.order_id": "x"}', None, NOW, 0, None, None, 4]
# two waits: seq 2 takes type.7 or order.paid, seq 3 a timer
WAITS = [2, "event", NOW + 60, "type.7", '{"data.order_id": "x"}', None, NOW, 0, None,
         '[{"seq": 2, "kind": "event"}, {"seq": 3, "kind": "timer"}]', 4]
NO_STEPS: list[list[Any]] = [[]] * 7
CLAIMS = [(w, r, re) for w in (False, True) for r in (False, True) for re in (False, True)]


@pytest.mark.parametrize(("workflows", "run_ids", "reclaim"), CLAIMS)
async def test_claims_use_indexes(loaded: str, workflows: bool, run_ids: bool,
                                  reclaim: bool) -> None:
    query = sql.claim(workflows=workflows, run_ids=run_ids, reclaim=reclaim)
    filters = [f for f, on in ((["wf1", "wf2"], workflows), (["run-95000"], run_ids)) if on]
    # the time parameter NULL: judged by the database's clock, as in production
    await assert_no_scan(loaded, query, "worker-1", 30.0, None, 64, *filters)


@pytest.mark.parametrize(("workflows", "reclaim"), [(False, False), (True, True)])
async def test_scoped_claims_use_indexes(loaded: str, workflows: bool, reclaim: bool) -> None:
    query = sql.claim(workflows=workflows, run_ids=False, reclaim=reclaim, scoped=True)
    scope = postgres_scope_args(ClaimScope(("default", "other"), "p1", "v1",
                                           auto_upgrade=("wf2",)))
    filters = [["wf1", "wf2"]] if workflows else []
    await assert_no_scan(loaded, query, "worker-1", 30.0, None, 64, *filters, *scope)


@pytest.mark.parametrize("name", [
    "accept_broadcast", "accept_addressed", "candidates", "candidates_two_waits",
    "candidates_second_type", "paths", "resume", "lock_runs", "insert_events", "find_events",
    "find_events_two_types", "deliver", "wait_for_event", "wait_for_events", "next_wake",
    "history", "histories", "chapter_history", "get_run", "create_run", "create_runs",
    "renew", "cancel", "cancel_parent", "children", "append", "finish", "finish_child",
    "continue", "purge_events", "due_outbox", "purge_namespaces", "purge_runs",
    "purge_chapter_namespaces", "purge_chapters", "live_leases", "stale_paths",
    "prune_paths"])
async def test_hot_statements_use_indexes(loaded: str, name: str) -> None:
    event = ["default", "/t", "new-1", "order.paid", None, "{}", NOW, NOW + 60]
    statements: dict[str, tuple[str, list[Any]]] = {
        "accept_broadcast": (sql.ACCEPT_BROADCAST, event),
        "accept_addressed": (sql.ACCEPT_ADDRESSED, [*event[:4], "run-50007", *event[5:]]),
        "candidates": (match_sql.CANDIDATES, [[0, 0], ["default"] * 2, ["order.paid"] * 2,
                                              ["data.order_id", ""], ['"order-50004"', ""]]),
        "candidates_two_waits": (match_sql.CANDIDATES, [[0], ["default"], ["order.paid"],
                                                        ["data.order_id"], ['"order-50001"']]),
        "candidates_second_type": (match_sql.CANDIDATES, [
            [0, 1], ["default"] * 2, ["order.refunded", "order.paid"], ["data.order_id"] * 2,
            ['"order-55002"', '"order-55002"']]),
        "paths": (match_sql.PATHS, [["default"], ["order.paid"]]),
        "resume": (sql.RESUME, [["run-50007"], [1], [5], ["type.7"], ["{}"], [1], [None],
                                NOW]),
        "lock_runs": (sql.LOCK_RUNS, [["run-50007", "run-60000"]]),
        "insert_events": (sql.INSERT_EVENTS, [NOW, NOW + 60, ["default"], ["/t"], ["n-2"],
                                              ["type.7"], [None], ["{}"]]),
        "find_events": (sql.FIND_EVENTS, ["default", ["type.7"], "run-50007", NOW - 60]),
        "find_events_two_types": (sql.FIND_EVENTS, ["default", ["type.7", "type.8"],
                                                    "run-50007", NOW - 60]),
        "deliver": (sql.DELIVER, ["run-50007", 1, 3, "type.7", "{}", NOW, 4]),
        "wait_for_event": (match_sql.WAIT_FOR_EVENT,
                           ["run-99500", *WAIT, ["type.7"], ["data.order_id"], ['"x"'], [2],
                            [1]]),
        "wait_for_events": (match_sql.WAIT_FOR_EVENT,
                            ["run-99500", *WAITS, ["type.7", "order.paid"],
                             ["data.order_id"] * 2, ['"x"'] * 2, [2, 2], [1, 1]]),
        "chapter_history": (sql.CHAPTER_HISTORY, ["run-70000", 1]),
        "next_wake": (sql.NEXT_WAKE_TIMED, []),
        "history": (sql.HISTORY, ["run-70000"]),
        "histories": (sql.HISTORIES, [["run-70000", "run-90001"]]),
        "get_run": (sql.GET_RUN, ["run-70000"]),
        "create_run": (sql.CREATE_RUN, ["new", "default", "wf", "[]", NOW, None, "{}", None,
                                        "pinned", "run-60000"]),
        "live_leases": (sql.LIVE_LEASES, ["worker-1", None]),
        "renew": (sql.RENEW, [30.0, "worker-1", ["run-99001"], None]),
        "cancel": (sql.CANCEL, ["run-70000", "test", NOW, "with run-70000"]),
        "cancel_parent": (sql.CANCEL, ["run-55000", "test", NOW, "with run-55000"]),
        "children": (sql.list_runs(namespace=False, status=False, workflow=False, parent=True),
                     ["run-55000", 100]),
        # fenced writes under the lease of a running run (epoch 1), time from the database
        "append": (sql.APPEND, ["run-99500", 1, None, [7], ["activity"], ["a"], ["1"], [None],
                                [NOW], [7], []]),
        "finish": (sql.FINISH, ["run-99700", 1, None, *NO_STEPS, "completed", "1", None]),
        "finish_child": (sql.FINISH, ["run-99500", 1, None, *NO_STEPS, "completed", "1",
                                      None]),
        "continue": (sql.CONTINUE, ["run-99500", 1, None, *NO_STEPS, "[]"]),
        "purge_events": (sql.PURGE, [NOW]),
        "due_outbox": (sql.DUE_OUTBOX, [NOW, 100, 30.0]),
        "create_runs": (sql.CREATE_RUNS, [NOW, ["run-5", "new-1"], ["default"] * 2, ["wf"] * 2,
                                          ["[]"] * 2, [None] * 2, ["{}"] * 2, [None] * 2,
                                          ["pinned"] * 2, [None, "run-60000"]]),
        "purge_namespaces": (retention_sql.NAMESPACES, []),
        "purge_runs": (retention_sql.PURGE_RUNS, ["default", NOW - 86400 * 30, 500]),
        "purge_chapter_namespaces": (retention_sql.CHAPTER_NAMESPACES, []),
        "purge_chapters": (retention_sql.PURGE_CHAPTERS, ["default", NOW - 86400 * 30, 500]),
        "stale_paths": (match_sql.STALE_PATHS, [match_sql.MOST_STALE_PATHS]),
        "prune_paths": (match_sql.PRUNE_PATHS, [["default"] * 2, ["order.paid", "type.7"],
                                                ["data.order_id"] * 2]),
    }
    query, args = statements[name]
    await assert_no_scan(loaded, query, *args)
