"""Indexed event matching on SQLite, the same tables and rules as ``postgres_match``.

An event wait writes one ``wait_keys`` row per ``match`` key (one with the empty path when
it has none) for each of its event types, under its ``seq``, and the paths it uses in
``wait_paths``; a trigger deletes a run's rows when it stops waiting. An event's candidates
are the runs with a row for every key of one of their waits, found by index from the values
the event has at the paths waited on for its type.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from kenning.core.matching import event_keys
from kenning.core.models import CloudEventRecord, Wait
from kenning.stores.rows import wait_key_rows


def index_waits(conn: sqlite3.Connection, namespace: str, run_id: str,
                waits: Sequence[Wait]) -> None:
    """Write the keys of the event waits ``waits`` for the run that just began them."""
    rows = wait_key_rows(waits)
    conn.executemany(
        "INSERT OR IGNORE INTO wait_paths (namespace, event_type, path) VALUES (?, ?, ?)",
        [(namespace, event_type, path)
         for event_type, path in sorted({(row[0], row[1]) for row in rows})])
    conn.executemany(
        "INSERT OR IGNORE INTO wait_keys (namespace, event_type, path, value, run_id, seq,"
        " nkeys) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(namespace, typ, path, value, run_id, seq, n) for typ, path, value, seq, n in rows])


def candidates(conn: sqlite3.Connection, namespace: str, event: CloudEventRecord,
               now: float) -> list[Any]:
    """The ``runs`` rows waiting for ``event``'s type (not timed out) one of whose waits has
    every key it offers (keys count per wait: two waits of a run may share keys), in run id
    order."""
    paths = [row[0] for row in conn.execute(
        "SELECT path FROM wait_paths WHERE namespace = ? AND event_type = ?",
        (namespace, event.type))]
    keys = event_keys(event, paths)
    if not keys:
        return []
    offered = " UNION ALL ".join("SELECT ? AS path, ? AS value" for _ in keys)
    return conn.execute(
        f"WITH e AS ({offered}),"
        " k AS (SELECT DISTINCT w.run_id FROM e JOIN wait_keys w ON w.namespace = ?"
        " AND w.event_type = ? AND w.path = e.path AND w.value = e.value"
        " GROUP BY w.run_id, w.seq, w.nkeys HAVING count(*) = w.nkeys)"
        " SELECT r.* FROM k JOIN runs r ON r.run_id = k.run_id"
        " WHERE r.status = 'waiting_for_event' AND (r.wake_at IS NULL OR r.wake_at > ?)"
        " ORDER BY r.run_id",
        [*(item for key in keys for item in key), namespace, event.type, now]).fetchall()


def prune_paths(conn: sqlite3.Connection) -> int:
    """Delete the paths no ``wait_keys`` row uses any more (one probe of its key each; the
    table of paths is small); how many."""
    return conn.execute(
        "DELETE FROM wait_paths WHERE NOT EXISTS (SELECT 1 FROM wait_keys k"
        " WHERE k.namespace = wait_paths.namespace AND k.event_type = wait_paths.event_type"
        " AND k.path = wait_paths.path)").rowcount
