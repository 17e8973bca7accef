"""SQLite's claim takes pending, due and expired runs from one index each. On a file of
100,000 runs, with and without ``ANALYZE`` (the store never runs it), for every shape of the
claim: EXPLAIN QUERY PLAN shows no scan of ``runs`` (a walk of the table or of a whole
index), and running it costs a bounded number of VM steps, not some per waiting run (a
search of an index on the status alone reads every waiting run, yet shows no scan). The
claim takes the same runs as the single ``OR`` it replaces."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kenning.core.models import ClaimScope
from kenning.stores import sqlite_schema
from kenning.stores.sqlite_claims import claim_filters, claim_sql

NOW = time.time()
# 1-50,000 finished, 50,001-80,000 wait for an event (every tenth with a deadline, past for
# every hundredth), 80,001-90,000 for a timer (every hundredth due), 90,001-99,000 pending,
# the rest running (every tenth lease expired); created in id order.
_LOAD = f"""
WITH RECURSIVE g(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM g WHERE i < 100000)
INSERT INTO runs (run_id, namespace, workflow, input, status, created_at, pool, build_id,
    wake_at, lease_owner, lease_expires)
SELECT 'run-' || i, 'ns' || (i % 3), 'wf' || (i % 10), '[]',
    CASE WHEN i <= 50000 THEN 'completed' WHEN i <= 80000 THEN 'waiting_for_event'
         WHEN i <= 90000 THEN 'waiting_for_timer' WHEN i <= 99000 THEN 'pending'
         ELSE 'running' END,
    {NOW} - 100000 + i, CASE WHEN i % 5 = 0 THEN 'p1' END, 'v' || (i % 2),
    CASE WHEN i > 50000 AND i <= 90000 AND i % 10 = 0 THEN
         CASE WHEN i % 100 = 0 THEN {NOW} - 1 ELSE {NOW} + 3600 END END,
    CASE WHEN i > 99000 THEN 'worker-' || (i % 4) END,
    CASE WHEN i > 99000 THEN CASE WHEN i % 10 = 0 THEN {NOW} - 1 ELSE {NOW} + 30 END END
FROM g
"""
SHAPES = [
    {}, {"workflows": ["wf1", "wf2"]}, {"run_ids": ["run-95000", "run-60000"]},
    {"scope": ClaimScope(("ns1", "ns2"), "p1", "v1", auto_upgrade=("wf3",))},
    {"scope": ClaimScope(None, "p1", "v1", drain=True), "workflows": ["wf1"]},
]


@pytest.fixture(scope="module", params=["unanalyzed", "analyzed"])
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
       ) -> Iterator[sqlite3.Connection]:
    """A store's file of 100,000 runs in every state (``ANALYZE``d or not)."""
    path = Path(tmp_path_factory.mktemp("plans")) / "kenning.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.row_factory = sqlite3.Row
    sqlite_schema.migrate(conn)
    conn.execute("BEGIN")
    conn.execute(_LOAD)
    conn.execute("COMMIT")
    if request.param == "analyzed":
        conn.execute("ANALYZE")
    yield conn
    conn.close()


def _claim(shape: dict[str, Any], *, reclaim: bool = False) -> tuple[str, dict[str, Any]]:
    filters, sets, params = claim_filters(**shape)
    return claim_sql(filters, sets), {**params, "now": NOW, "worker": "worker-1",
                                      "expires": NOW + 30, "limit": 64,
                                      "reclaim": int(reclaim)}


MOST_STEPS = 100_000  # VM instructions of a claim of 64 runs; the OR walks ~1,000,000


def steps_of(conn: sqlite3.Connection, sql: str, params: dict[str, Any]) -> int:
    """VM instructions that running ``sql`` takes (rolled back), to the nearest 1,000."""
    counted = [0]

    def count() -> int:
        counted[0] += 1000
        return 0
    conn.execute("BEGIN")
    conn.set_progress_handler(count, 1000)
    try:
        conn.execute(sql, params).fetchall()
    finally:
        conn.set_progress_handler(None, 0)
        conn.execute("ROLLBACK")
    return counted[0]


def scans_of_runs(conn: sqlite3.Connection, sql: str, params: dict[str, Any]) -> list[str]:
    """The lines of the plan that walk ``runs`` (or a whole index of it)."""
    plan = [row["detail"] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
    assert plan, sql
    return [line for line in plan if line.startswith(("SCAN runs", "SCAN r "))]


# the claim as it was: one OR over the runnable states, in creation order
OLD_CLAIM = ("SELECT run_id FROM runs WHERE (status = 'pending' OR (status IN"
             " ('waiting_for_event', 'waiting_for_timer') AND wake_at <= :now) OR (status ="
             " 'running' AND (lease_expires < :now OR (:reclaim AND lease_owner = :worker))))"
             " ORDER BY created_at LIMIT :limit")


def test_the_checks_see_the_old_claim(db: sqlite3.Connection) -> None:
    params = {"now": NOW, "limit": 64, "reclaim": 0, "worker": "worker-1"}
    assert scans_of_runs(db, OLD_CLAIM, params) or steps_of(db, OLD_CLAIM, params) > MOST_STEPS


@pytest.mark.parametrize("reclaim", [False, True])
@pytest.mark.parametrize("shape", SHAPES, ids=["all", "workflows", "run_ids", "scoped",
                                                "draining"])
def test_claims_take_each_state_from_an_index(db: sqlite3.Connection, shape: dict[str, Any],
                                              reclaim: bool) -> None:
    sql, params = _claim(shape, reclaim=reclaim)
    plan = "\n".join(row["detail"] for row in db.execute(f"EXPLAIN QUERY PLAN {sql}", params))
    assert not scans_of_runs(db, sql, params), plan
    assert steps_of(db, sql, params) < MOST_STEPS, plan


@pytest.mark.parametrize("limit", [1, 8, 500, 2000])
@pytest.mark.parametrize("reclaim", [False, True])
def test_claim_takes_the_runs_the_single_or_took(db: sqlite3.Connection, limit: int,
                                                 reclaim: bool) -> None:
    sql, params = _claim({}, reclaim=reclaim)
    params["limit"] = limit
    select = sql[sql.index("(SELECT run_id FROM (") + 1:sql.rindex(")")]
    taken = [row[0] for row in db.execute(select, params)]
    assert taken == [row[0] for row in db.execute(OLD_CLAIM, params)]
    assert len(taken) == limit
