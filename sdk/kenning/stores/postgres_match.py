"""Indexed event matching on PostgreSQL: the match keys of each wait live in ``wait_keys``.

A wait writes one row per ``match`` key (one with the empty path when it has none) in the
transaction that suspends the run, and records the paths it uses in ``wait_paths``; a
trigger deletes a run's rows when it stops waiting (resumed, timed out, cancelled, finished).
An event reads the paths waited on for its type, offers its values at those paths only, and
its candidates are the runs with a row for every key of their wait: index lookups, however
many runs wait. ``event_matches`` re-checks each candidate exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kenning.core.matching import event_keys, wait_keys
from kenning.core.models import CloudEventRecord, Wait
from kenning.stores.postgres_sql import WAIT_COLUMNS, set_wait

_SEQ = f"${2 + WAIT_COLUMNS.index('wait_seq')}"
_TYPE = f"${2 + WAIT_COLUMNS.index('wait_type')}"
_KEYS = 2 + len(WAIT_COLUMNS)  # $n paths, $n+1 values

# Suspend the run waiting for an event and index its wait, in one statement:
# $1 run, the wait columns from $2, then the key paths and values as arrays.
WAIT_FOR_EVENT = (
    "WITH u AS (UPDATE runs SET status = 'waiting_for_event', lease_owner = NULL,"
    f" lease_expires = NULL{set_wait(2)} WHERE run_id = $1 RETURNING run_id, namespace),"
    f" p AS (INSERT INTO wait_paths (namespace, event_type, path) SELECT DISTINCT u.namespace,"
    f" {_TYPE}, k.path FROM u, unnest(${_KEYS}::text[]) AS k(path) ON CONFLICT DO NOTHING)"
    " INSERT INTO wait_keys (namespace, event_type, path, value, run_id, seq, nkeys)"
    f" SELECT u.namespace, {_TYPE}, k.path, k.value, u.run_id, {_SEQ},"
    f" cardinality(${_KEYS}::text[]) FROM u,"
    f" unnest(${_KEYS}::text[], ${_KEYS + 1}::text[]) AS k(path, value) ON CONFLICT DO NOTHING"
)

# The paths waited on for some (namespace, type) pairs: $1 namespaces, $2 types.
PATHS = (
    "SELECT p.namespace, p.event_type, p.path FROM wait_paths p"
    " JOIN unnest($1::text[], $2::text[]) AS t(ns, typ)"
    " ON p.namespace = t.ns AND p.event_type = t.typ"
)

# The runs every key of whose wait an event offers: $1 event numbers, $2 namespaces,
# $3 types, $4 paths, $5 values (one element per offered key). Only the columns that
# matching needs, never the input.
CANDIDATES = (
    "WITH e AS (SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::text[],"
    " $5::text[]) AS e(n, ns, typ, path, value)),"
    " k AS (SELECT DISTINCT w.run_id FROM e JOIN wait_keys w ON w.namespace = e.ns"
    " AND w.event_type = e.typ AND w.path = e.path AND w.value = e.value"
    " GROUP BY e.n, w.run_id, w.nkeys HAVING count(*) = w.nkeys)"
    " SELECT r.run_id, r.namespace, r.status, r.wait_seq, r.wait_kind, r.wake_at, r.wait_type,"
    " r.wait_match, r.wait_lookback, r.wait_started, r.wait_attempt, r.wait_error"
    " FROM k JOIN runs r ON r.run_id = k.run_id WHERE r.status = 'waiting_for_event'"
)


def wait_key_params(wait: Wait) -> list[list[str]]:
    """The key paths and values of ``wait``, for ``WAIT_FOR_EVENT`` after the wait columns."""
    keys = wait_keys(wait.match)
    return [[path for path, _ in keys], [value for _, value in keys]]


Broadcast = tuple[str, CloudEventRecord]  # (namespace, event) not addressed to a run


async def find_candidates(conn: Any, events: Sequence[Broadcast],
                          paths: dict[tuple[str, str], list[str]] | None = None) -> list[Any]:
    """The waiting runs whose keys some of ``events`` offer (rows with the wait columns).

    ``paths`` are the paths waited on per (namespace, type) when the caller read them
    already (a lone event reads them as it is inserted)."""
    if not events:
        return []
    if paths is None:
        pairs = sorted({(ns, ev.type) for ns, ev in events})
        paths = {}
        for row in await conn.fetch(PATHS, [p[0] for p in pairs], [p[1] for p in pairs]):
            paths.setdefault((row["namespace"], row["event_type"]), []).append(row["path"])
    columns: tuple[list[Any], ...] = ([], [], [], [], [])
    for n, (ns, ev) in enumerate(events):
        for path, value in event_keys(ev, paths.get((ns, ev.type), ())):
            for column, item in zip(columns, (n, ns, ev.type, path, value), strict=True):
                column.append(item)
    if not columns[0]:
        return []
    return list(await conn.fetch(CANDIDATES, *columns))
