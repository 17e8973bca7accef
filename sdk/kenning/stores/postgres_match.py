"""Indexed event matching on PostgreSQL: the match keys of each wait live in ``wait_keys``.

An event wait writes one row per ``match`` key (one with the empty path when it has none)
for each of its event types, under its ``seq``, in the transaction that suspends the run,
and records the paths it uses in ``wait_paths``; a trigger deletes a run's rows when it
stops waiting (resumed, timed out, cancelled, finished). An event reads the paths waited on
for its type, offers its values at those paths only, and its candidates are the runs with
a row for every key of one of their waits: index lookups, however many runs wait.
``event_matches`` re-checks each candidate exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from kenning.core.matching import event_keys
from kenning.core.models import CloudEventRecord, Wait
from kenning.stores.postgres_sql import WAIT_COLUMNS, set_wait
from kenning.stores.rows import wait_key_rows

_KEYS = 2 + len(WAIT_COLUMNS)  # $n types, $n+1 paths, $n+2 values, $n+3 seqs, $n+4 counts

# Suspend the run waiting for events (and timers) and index its event waits, in one
# statement: $1 run, the wait columns from $2, then one element per (wait, type, key) in
# the arrays of types, paths, values, seqs and key counts (a wait's keys per type).
WAIT_FOR_EVENT = (
    "WITH u AS (UPDATE runs SET status = 'waiting_for_event', lease_owner = NULL,"
    f" lease_expires = NULL{set_wait(2)} WHERE run_id = $1 RETURNING run_id, namespace),"
    " p AS (INSERT INTO wait_paths (namespace, event_type, path) SELECT DISTINCT u.namespace,"
    f" k.typ, k.path FROM u, unnest(${_KEYS}::text[], ${_KEYS + 1}::text[]) AS k(typ, path)"
    " ON CONFLICT DO NOTHING)"
    " INSERT INTO wait_keys (namespace, event_type, path, value, run_id, seq, nkeys)"
    " SELECT u.namespace, k.typ, k.path, k.value, u.run_id, k.seq, k.n FROM u,"
    f" unnest(${_KEYS}::text[], ${_KEYS + 1}::text[], ${_KEYS + 2}::text[],"
    f" ${_KEYS + 3}::int[], ${_KEYS + 4}::int[]) AS k(typ, path, value, seq, n)"
    " ON CONFLICT DO NOTHING"
)

# The paths waited on for some (namespace, type) pairs: $1 namespaces, $2 types.
PATHS = (
    "SELECT p.namespace, p.event_type, p.path FROM wait_paths p"
    " JOIN unnest($1::text[], $2::text[]) AS t(ns, typ)"
    " ON p.namespace = t.ns AND p.event_type = t.typ"
)

# The runs one of whose waits has every key an event offers: $1 event numbers,
# $2 namespaces, $3 types, $4 paths, $5 values (one element per offered key). Keys count
# per wait (seq): two waits of a run may share keys. Only the columns that matching needs,
# never the input.
CANDIDATES = (
    "WITH e AS (SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::text[],"
    " $5::text[]) AS e(n, ns, typ, path, value)),"
    " k AS (SELECT DISTINCT w.run_id FROM e JOIN wait_keys w ON w.namespace = e.ns"
    " AND w.event_type = e.typ AND w.path = e.path AND w.value = e.value"
    " GROUP BY e.n, w.run_id, w.seq, w.nkeys HAVING count(*) = w.nkeys)"
    " SELECT r.run_id, r.namespace, r.status, r.epoch, r.wait_seq, r.wait_kind, r.wake_at,"
    " r.wait_type, r.wait_match, r.wait_lookback, r.wait_started, r.wait_attempt,"
    " r.wait_error, r.waits, r.wait_ordinal"
    " FROM k JOIN runs r ON r.run_id = k.run_id WHERE r.status = 'waiting_for_event'"
)


# A path is stale once no wait_keys row uses it (its waits ended). Each path is probed by
# the key of wait_keys (a scalar subquery, so never a join that reads all the keys); the
# table of paths is small: one row per (namespace, type, path) ever waited on. $1 the most.
_UNUSED = ("(SELECT k.run_id FROM wait_keys k WHERE k.namespace = p.namespace"
           " AND k.event_type = p.event_type AND k.path = p.path LIMIT 1) IS NULL")
STALE_PATHS = f"SELECT namespace, event_type, path FROM wait_paths p WHERE {_UNUSED} LIMIT $1"
# Delete the paths given ($1 namespaces, $2 types, $3 paths) that are still unused. The
# caller holds the advisory lock of each type shared: a wait that begins meanwhile holds it
# exclusively, so it either committed its keys before this statement (the path stays) or
# inserts the path again after this commit.
PRUNE_PATHS = (
    "DELETE FROM wait_paths p USING unnest($1::text[], $2::text[], $3::text[])"
    " AS s(namespace, event_type, path) WHERE p.namespace = s.namespace"
    f" AND p.event_type = s.event_type AND p.path = s.path AND {_UNUSED}"
)
MOST_STALE_PATHS = 1000  # pruned per pass


def wait_key_params(waits: Sequence[Wait]) -> list[list[Any]]:
    """The index rows of the event waits of ``waits``, for ``WAIT_FOR_EVENT`` after the wait
    columns: types, paths, values, seqs and key counts."""
    rows = wait_key_rows(waits)
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(5)]


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
