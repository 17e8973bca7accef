"""Queries the operator runs over all unfinished runs, for both stores: grouped counts of the
runs that need a worker (the pool scaler) and pages of unfinished runs from the oldest (the
catch-up sweep). Each reads by an index on the status it asks for; none lists every run."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from kenning.core.models import BuildCount, RunCount

_ACTIVE = (
    "SELECT namespace, workflow, pool, count(*) AS n FROM ("
    " SELECT namespace, workflow, pool FROM runs WHERE status = 'pending'"
    " UNION ALL SELECT namespace, workflow, pool FROM runs WHERE status = 'running'"
    " UNION ALL SELECT namespace, workflow, pool FROM runs"
    "  WHERE status IN ('waiting_for_event', 'waiting_for_timer') AND wake_at IS NOT NULL"
    "  AND wake_at <= {p1}"
    ") AS active GROUP BY namespace, workflow, pool"
)
_UNFINISHED = (
    "SELECT * FROM runs"
    " WHERE status IN ('pending', 'running', 'waiting_for_event', 'waiting_for_timer')"
    " {after} ORDER BY created_at, run_id LIMIT {limit}"
)

PG_COUNT_ACTIVE = _ACTIVE.format(p1="$1")
SQLITE_COUNT_ACTIVE = _ACTIVE.format(p1="?")
PG_UNFINISHED_FIRST = _UNFINISHED.format(after="", limit="$1")
PG_UNFINISHED_AFTER = _UNFINISHED.format(after="AND (created_at, run_id) > ($2, $3)",
                                         limit="$1")
SQLITE_UNFINISHED_FIRST = _UNFINISHED.format(after="", limit="?")
SQLITE_UNFINISHED_AFTER = _UNFINISHED.format(after="AND (created_at, run_id) > (?, ?)",
                                             limit="?")


def run_counts(rows: Iterable[Mapping[str, Any]]) -> list[RunCount]:
    """``RunCount`` rows of a grouped count."""
    return [RunCount(namespace=r["namespace"], workflow=r["workflow"], pool=r["pool"],
                     count=int(r["n"])) for r in rows]


def build_counts(rows: Iterable[Mapping[str, Any]]) -> list[BuildCount]:
    """``BuildCount`` rows of the count of unfinished runs by build."""
    return [BuildCount(r["namespace"], r["pool"], r["workflow"], r["build_id"], r["upgrade"],
                       int(r["unfinished"]), int(r["runnable"] or 0)) for r in rows]
