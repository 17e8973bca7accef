"""Indexed event matching on SQLite, the same tables and rules as ``postgres_match``.

A wait writes one ``wait_keys`` row per ``match`` key (one with the empty path when it has
none) and the paths it uses in ``wait_paths``; a trigger deletes a run's rows when it stops
waiting. An event's candidates are the runs with a row for every key of their wait, found
by index from the values the event has at the paths waited on for its type.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from kenning.core.matching import event_keys, wait_keys
from kenning.core.models import CloudEventRecord, Wait


def index_wait(conn: sqlite3.Connection, namespace: str, run_id: str, wait: Wait) -> None:
    """Write the keys of ``wait`` for the run that just began it."""
    keys = wait_keys(wait.match)
    conn.executemany(
        "INSERT OR IGNORE INTO wait_paths (namespace, event_type, path) VALUES (?, ?, ?)",
        [(namespace, wait.event_type, path) for path in sorted({p for p, _ in keys})])
    conn.executemany(
        "INSERT OR IGNORE INTO wait_keys (namespace, event_type, path, value, run_id, seq,"
        " nkeys) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(namespace, wait.event_type, path, value, run_id, wait.seq, len(keys))
         for path, value in keys])


def candidates(conn: sqlite3.Connection, namespace: str, event: CloudEventRecord,
               now: float) -> list[Any]:
    """The ``runs`` rows waiting for ``event``'s type (not timed out) whose every key it
    offers, in run id order."""
    paths = [row[0] for row in conn.execute(
        "SELECT path FROM wait_paths WHERE namespace = ? AND event_type = ?",
        (namespace, event.type))]
    keys = event_keys(event, paths)
    if not keys:
        return []
    offered = " UNION ALL ".join("SELECT ? AS path, ? AS value" for _ in keys)
    return conn.execute(
        f"WITH e AS ({offered}),"
        " k AS (SELECT w.run_id FROM e JOIN wait_keys w ON w.namespace = ?"
        " AND w.event_type = ? AND w.path = e.path AND w.value = e.value"
        " GROUP BY w.run_id, w.nkeys HAVING count(*) = w.nkeys)"
        " SELECT r.* FROM k JOIN runs r ON r.run_id = k.run_id"
        " WHERE r.status = 'waiting_for_event' AND (r.wake_at IS NULL OR r.wake_at > ?)"
        " ORDER BY r.run_id",
        [*(item for key in keys for item in key), namespace, event.type, now]).fetchall()
