"""Accepting CloudEvents into SQLite: insert (deduplicated), then resume waiting runs.

An event addressed to a run (``kenningrun``) looks at that run only; any other finds its
candidates by the wait keys (``sqlite_match``). ``match`` is re-checked here, and a run
waiting on several waits is resumed at the lowest ``seq`` that takes the event.
"""

from __future__ import annotations

from kenning.core.events import record_to_json
from kenning.core.models import (
    AcceptOutcome,
    AcceptResult,
    CloudEventRecord,
    Notification,
    NotificationKind,
    Step,
    StepKind,
    Wait,
)
from kenning.stores import sqlite_match
from kenning.stores.rows import wait_taking, waits_from_row
from kenning.stores.sqlite_base import CLEAR_WAIT, NO_WAIT, Conn, Notes, insert_steps


def accept_one(conn: Conn, notes: Notes, namespace: str, ev: CloudEventRecord, now: float,
               expires_at: float) -> AcceptResult:
    """Insert ``ev`` unless a duplicate, and resume the runs that wait for it."""
    cur = conn.execute(
        "INSERT OR IGNORE INTO events (namespace, source, id, type, target_run, record,"
        " received_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (namespace, ev.source, ev.id, ev.type, ev.target_run, record_to_json(ev), now,
         expires_at))
    if cur.rowcount != 1:
        return AcceptResult(AcceptOutcome.DUPLICATE)
    pk = cur.lastrowid
    assert pk is not None
    if ev.target_run is None:
        rows = sqlite_match.candidates(conn, namespace, ev, now)
    else:
        rows = conn.execute(
            "SELECT * FROM runs WHERE namespace = ? AND status = 'waiting_for_event'"
            " AND (wake_at IS NULL OR wake_at > ?) AND run_id = ?",
            (namespace, now, ev.target_run)).fetchall()
    resumed = []
    for row in rows:
        wait = wait_taking(waits_from_row(row), ev)
        if wait is None:
            continue
        deliver(conn, row["run_id"], wait, pk, ev, now, row["wait_ordinal"])
        conn.execute(
            f"UPDATE runs SET status = 'pending', updated_at = :now, {CLEAR_WAIT}"
            " WHERE run_id = :run_id", {"now": now, "run_id": row["run_id"], **NO_WAIT})
        notes.append(Notification(NotificationKind.RUNNABLE, row["run_id"]))
        resumed.append(row["run_id"])
    return AcceptResult(AcceptOutcome.ACCEPTED, tuple(resumed))


def deliver(conn: Conn, run_id: str, wait: Wait, pk: int, record: CloudEventRecord,
            now: float, ordinal: int | None) -> Step:
    """Record that the run consumed event ``pk`` at ``wait``'s seq; return the step."""
    step = Step(wait.seq, StepKind.EVENT, wait.step_name, record_to_json(record), now,
                ordinal=ordinal)
    conn.execute("INSERT INTO consumptions (run_id, event_pk) VALUES (?, ?)", (run_id, pk))
    insert_steps(conn, run_id, [step])
    return step
