"""Waits and events on SQLite: a run begins its waits (consuming an event already there, or
suspending on its waits, indexed by match key), and accepted events resume the runs that
wait for them (``sqlite_accept``)."""

from __future__ import annotations

from collections.abc import Sequence

from kenning.core.events import record_from_json
from kenning.core.matching import event_matches
from kenning.core.models import (
    AcceptResult,
    CloudEventRecord,
    Lease,
    Notification,
    NotificationKind,
    Step,
    Wait,
    WaitKind,
    earliest_wake,
)
from kenning.core.store import EventWaitResult
from kenning.core.validation import validate_events
from kenning.stores import sqlite_match
from kenning.stores.rows import wait_columns
from kenning.stores.sqlite_accept import accept_one, deliver
from kenning.stores.sqlite_base import CLEAR_WAIT, NO_WAIT, Conn, Notes, SqliteBase, insert_steps


class SqliteWaits(SqliteBase):
    """The wait and event methods of ``SqliteStore``."""

    async def begin_waits(self, lease: Lease, waits: Sequence[Wait], steps: Sequence[Step] = (),
                          *, next_ordinal: int, suspend: bool = True) -> EventWaitResult:
        """Consume an event one of the event waits takes, or suspend the run on all waits
        (see ``Store.begin_waits``)."""
        return await self._begin_waits(lease, waits, steps, next_ordinal, suspend)

    async def _begin_waits(self, lease: Lease, waits: Sequence[Wait], steps: Sequence[Step],
                           ordinal: int, suspend: bool) -> EventWaitResult:
        ordered = sorted(waits, key=lambda w: w.seq)
        if suspend and not ordered:
            raise ValueError("begin_waits: nothing to suspend on (no waits)")
        events = [w for w in ordered if w.kind is WaitKind.EVENT]
        cols = wait_columns(ordered, ordinal)
        wake_at = earliest_wake(ordered)

        def op(conn: Conn, notes: Notes) -> EventWaitResult:
            now = self._fence(conn, lease)
            insert_steps(conn, lease.run_id, steps)
            namespace = conn.execute("SELECT namespace FROM runs WHERE run_id = ?",
                                     (lease.run_id,)).fetchone()[0]
            for wait in events:
                found = self._find_waiting_event(conn, namespace, lease.run_id, wait)
                if found is not None:
                    pk, record = found
                    step = deliver(conn, lease.run_id, wait, pk, record, now, ordinal)
                    conn.execute(f"UPDATE runs SET {CLEAR_WAIT} WHERE run_id = :run_id",
                                 {"run_id": lease.run_id, **NO_WAIT})
                    return EventWaitResult(step)
            if not suspend:
                return EventWaitResult(None)
            status = "waiting_for_event" if events else "waiting_for_timer"
            conn.execute(
                f"UPDATE runs SET status = '{status}', lease_owner = NULL,"
                f" lease_expires = NULL, {', '.join(f'{c} = :{c}' for c in cols)}"
                " WHERE run_id = :run_id", {"run_id": lease.run_id, **cols})
            sqlite_match.index_waits(conn, namespace, lease.run_id, events)
            if wake_at is not None:
                notes.append(Notification(NotificationKind.TIMER, lease.run_id, wake_at))
            else:
                notes.append(Notification(NotificationKind.WAITING, lease.run_id))
            return EventWaitResult(None)
        return await self._writer.run(op)

    def _find_waiting_event(self, conn: Conn, namespace: str, run_id: str, wait: Wait
                            ) -> tuple[int, CloudEventRecord] | None:
        since = (wait.started_at or self.clock()) - (wait.lookback or 0.0)
        types = {f"t{i}": t for i, t in enumerate(wait.event_types)}
        rows = conn.execute(
            "SELECT pk, record FROM events WHERE namespace = :ns"
            f" AND type IN ({', '.join(':' + k for k in types) or 'NULL'})"
            " AND (target_run = :run OR (target_run IS NULL AND received_at >= :since))"
            " AND pk NOT IN (SELECT event_pk FROM consumptions WHERE run_id = :run)"
            " ORDER BY pk",
            {"ns": namespace, "run": run_id, "since": since, **types})
        for row in rows:
            record = record_from_json(row["record"])
            if event_matches(record, wait.match):
                return row["pk"], record
        return None

    async def next_wake_at(self) -> float | None:
        """The earliest due time of a suspended run."""
        def op(conn: Conn, notes: Notes) -> float | None:
            row = conn.execute(
                "SELECT MIN(wake_at) FROM runs WHERE status IN ('waiting_for_event',"
                " 'waiting_for_timer') AND wake_at IS NOT NULL").fetchone()
            return None if row[0] is None else float(row[0])
        return await self._writer.run(op)

    # -- events ---------------------------------------------------------------------------
    async def accept_events(self, namespace: str,
                            events: Sequence[CloudEventRecord]) -> list[AcceptResult]:
        """Commit events (deduplicated) and resume the runs waiting for them."""
        validate_events(namespace, events)

        def op(conn: Conn, notes: Notes) -> list[AcceptResult]:
            now = self.clock()
            return [accept_one(conn, notes, namespace, ev, now, now + self.event_retention)
                    for ev in events]
        return await self._writer.run(op)

    async def count_events(self) -> int:
        """How many events are kept."""
        def op(conn: Conn, notes: Notes) -> int:
            return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        return await self._writer.run(op)

    async def purge_expired(self) -> int:
        """Drop events past their retention, with their consumption marks, and the paths
        of wait keys that no wait uses any more (each would cost every event of its type a
        probe)."""
        def op(conn: Conn, notes: Notes) -> int:
            now = self.clock()
            conn.execute("DELETE FROM consumptions WHERE event_pk IN"
                         " (SELECT pk FROM events WHERE expires_at < ?)", (now,))
            purged = conn.execute("DELETE FROM events WHERE expires_at < ?", (now,)).rowcount
            sqlite_match.prune_paths(conn)
            return purged
        return await self._writer.run(op)
