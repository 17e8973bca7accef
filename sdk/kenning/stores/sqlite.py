"""The embedded store: one SQLite file, WAL, group commit on a dedicated thread."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kenning.core.errors import LeaseLost, RunNotFound, SchemaTooNew, StoreUnavailable
from kenning.core.events import record_from_json, record_to_json
from kenning.core.matching import event_matches
from kenning.core.models import (
    AcceptOutcome,
    AcceptResult,
    BuildCount,
    Chapter,
    ClaimedRun,
    ClaimScope,
    CloudEventRecord,
    Lease,
    NewRun,
    Notification,
    NotificationKind,
    OutboxEntry,
    Run,
    RunCount,
    RunStatus,
    Step,
    StepKind,
    Wait,
    WaitKind,
)
from kenning.core.store import EventWaitResult, Listener
from kenning.core.validation import (
    MAX_INPUT_BYTES,
    check_size,
    validate_events,
    validate_new_run,
)
from kenning.stores import run_scans as scans
from kenning.stores import sqlite_match, sqlite_schema
from kenning.stores.claim_scope import sqlite_scope
from kenning.stores.listeners import ListenerSet
from kenning.stores.rows import (
    CHILD_EVENT_EXPIRY,
    DEFAULT_FINISHED_RETENTION,
    attempts_to_text,
    chapter_from_row,
    child_finished_event,
    child_of,
    earliest_wake,
    first_created,
    lease_lost,
    outbox_from_row,
    run_from_row,
    runnable_notes,
    step_from_row,
    wait_columns,
    waits_from_row,
)
from kenning.stores.sqlite_retention import SqliteRetention
from kenning.stores.sqlite_writer import GroupCommitWriter

log = logging.getLogger(__name__)

Conn = sqlite3.Connection
Notes = list[Notification]

_RUNNABLE = """
    (status = 'pending'
     OR (status IN ('waiting_for_event', 'waiting_for_timer') AND wake_at <= :now)
     OR (status = 'running' AND (lease_expires < :now OR (:reclaim AND lease_owner = :worker))))
"""
_CLEAR_WAIT = ", ".join(f"{col} = :{col}" for col in wait_columns(()))
_NO_WAIT = wait_columns(())
_INSERT_RUN = (
    "INSERT OR IGNORE INTO runs (run_id, namespace, workflow, input, status, created_at,"
    " updated_at, pool, labels, build_id, upgrade, parent_run_id)"
    " VALUES (?, ?, ?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?)"
)
_HISTORY_COLUMNS = "seq, kind, name, value, error, recorded_at, ordinal"
_UNFINISHED = "status NOT IN ('completed', 'failed', 'cancelled')"


def _run_values(new: NewRun, now: float) -> tuple[Any, ...]:
    return (new.run_id, new.namespace, new.workflow, new.input, now, now, new.pool,
            json.dumps(new.labels), new.build_id, new.upgrade, new.parent_run_id)


class SqliteStore(SqliteRetention):
    """``Store`` on a SQLite file. Several processes may share the file (WAL, busy timeout);
    wake-ups cross processes only through the workers' fallback poll."""

    def __init__(
        self,
        path: str,
        *,
        clock: Callable[[], float] | None = None,
        event_retention: float = 86_400.0,
        busy_timeout: float = 10.0,
        max_queue: int = 10_000,
    ) -> None:
        self.path = path
        self.clock: Callable[[], float] = clock or time.time
        self.event_retention = event_retention
        self.finished_retention_default = DEFAULT_FINISHED_RETENTION
        self._busy_timeout = busy_timeout
        self._listeners = ListenerSet()
        self._writer = GroupCommitWriter(self._connect, self._listeners.dispatch,
                                         max_queue=max_queue)
        self._schema_error: SchemaTooNew | None = None

    def _connect(self) -> Conn:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                               timeout=self._busy_timeout)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = OFF")
        try:
            sqlite_schema.migrate(conn)
        except SchemaTooNew as exc:
            self._schema_error = exc  # open() raises it as such, not as StoreUnavailable
            conn.close()
            raise
        return conn

    # -- lifecycle ----------------------------------------------------------------------
    async def open(self) -> None:
        """Open the file (creating it) and apply migrations; ``SchemaTooNew`` for a file
        of a newer Kenning."""
        self._schema_error = None
        try:
            self._writer.start()
        except StoreUnavailable:
            if self._schema_error is not None:
                raise self._schema_error from None
            raise

    async def close(self) -> None:
        """Finish queued operations and close the file."""
        self._writer.stop()

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the file answers."""
        await self._writer.run(lambda conn, notes: conn.execute("SELECT 1").fetchone())

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Hear about committed changes made through this store object."""
        return self._listeners.add(listener)

    # -- runs ---------------------------------------------------------------------------
    async def create_run(self, new: NewRun) -> tuple[Run, bool]:
        """Create a pending run; an existing id returns that run unchanged."""
        validate_new_run(new)

        def op(conn: Conn, notes: Notes) -> tuple[Run, bool]:
            now = self.clock()
            cur = conn.execute(_INSERT_RUN, _run_values(new, now))
            created = cur.rowcount == 1
            if created:
                notes.append(Notification(NotificationKind.RUNNABLE, new.run_id))
            return self._get(conn, new.run_id), created
        return await self._writer.run(op)

    async def create_runs(self, news: Sequence[NewRun]) -> list[tuple[bool, str]]:
        """Create many pending runs in one transaction (idempotent per id)."""
        batch = [validate_new_run(new) for new in news]

        def op(conn: Conn, notes: Notes) -> list[tuple[bool, str]]:
            return self._create_runs(conn, notes, batch)
        return await self._writer.run(op) if batch else []

    def _create_runs(self, conn: Conn, notes: Notes, batch: list[NewRun]
                     ) -> list[tuple[bool, str]]:
        now = self.clock()
        found: dict[str, tuple[bool, str]] = {}
        for new in batch:
            if new.run_id in found:
                continue
            cur = conn.execute(_INSERT_RUN, _run_values(new, now))
            if cur.rowcount == 1:
                found[new.run_id] = (True, new.workflow)
            else:
                row = conn.execute("SELECT workflow FROM runs WHERE run_id = ?",
                                   (new.run_id,)).fetchone()
                found[new.run_id] = (False, row[0])
        notes.extend(runnable_notes([i for i, (made, _) in found.items() if made]))
        return first_created(batch, found)

    def _get(self, conn: Conn, run_id: str) -> Run:
        row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunNotFound(f"no run with id '{run_id}'")
        return run_from_row(row)

    async def get_run(self, run_id: str) -> Run | None:
        """The run, or ``None``."""
        def op(conn: Conn, notes: Notes) -> Run | None:
            row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            return None if row is None else run_from_row(row)
        return await self._writer.run(op)

    async def list_runs(self, *, namespace: str | None = None, status: RunStatus | None = None,
                        workflow: str | None = None, parent: str | None = None,
                        limit: int = 100) -> list[Run]:
        """Runs, newest first (``parent``: the children of that run)."""
        clauses, params = [], []
        for column, value in (("namespace", namespace), ("workflow", workflow),
                              ("status", status.value if status else None),
                              ("parent_run_id", parent)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT * FROM runs {where} ORDER BY created_at DESC, run_id LIMIT ?"

        def op(conn: Conn, notes: Notes) -> list[Run]:
            return [run_from_row(r) for r in conn.execute(sql, (*params, limit))]
        return await self._writer.run(op)

    async def load_history(self, run_id: str, *, chapter: int | None = None) -> list[Step]:
        """The run's history in order: the current chapter, or ``chapter``."""
        def op(conn: Conn, notes: Notes) -> list[Step]:
            if chapter is None:
                return self._history(conn, run_id)
            rows = conn.execute(
                f"SELECT {_HISTORY_COLUMNS} FROM history_chapters WHERE run_id = :run"
                f" AND chapter = :chapter UNION ALL SELECT {_HISTORY_COLUMNS} FROM history"
                " WHERE run_id = :run AND :chapter = (SELECT chapter FROM runs"
                " WHERE run_id = :run) ORDER BY seq", {"run": run_id, "chapter": int(chapter)})
            return [step_from_row(r) for r in rows]
        return await self._writer.run(op)

    @staticmethod
    def _history(conn: Conn, run_id: str) -> list[Step]:
        rows = conn.execute("SELECT * FROM history WHERE run_id = ? ORDER BY seq", (run_id,))
        return [step_from_row(r) for r in rows]

    async def list_chapters(self, run_id: str) -> list[Chapter]:
        """The run's closed chapters, oldest first."""
        def op(conn: Conn, notes: Notes) -> list[Chapter]:
            rows = conn.execute("SELECT * FROM chapters WHERE run_id = ? ORDER BY chapter",
                                (run_id,))
            return [chapter_from_row(r) for r in rows]
        return await self._writer.run(op)

    async def cancel_run(self, run_id: str, reason: str) -> Run:
        """Cancel an unfinished run and its unfinished descendants, fencing out their
        workers; each cancelled child tells its parent."""
        def op(conn: Conn, notes: Notes) -> Run:
            now = self.clock()
            rows = conn.execute(
                f"WITH RECURSIVE t(run_id) AS (SELECT run_id FROM runs WHERE run_id = :run_id"
                f" AND {_UNFINISHED} UNION SELECT r.run_id FROM runs r JOIN t"
                " ON r.parent_run_id = t.run_id)"
                " UPDATE runs SET status = 'cancelled',"
                " error = CASE WHEN run_id = :run_id THEN :reason ELSE :inherited END,"
                " finished_at = :now, updated_at = :now, epoch = epoch + 1,"
                f" lease_owner = NULL, lease_expires = NULL, {_CLEAR_WAIT}"
                f" WHERE run_id IN (SELECT run_id FROM t) AND {_UNFINISHED} RETURNING *",
                {"reason": reason, "inherited": f"cancelled with {run_id}: {reason}",
                 "now": now, "run_id": run_id, **_NO_WAIT}).fetchall()
            for row in rows:
                notes.append(Notification(NotificationKind.CANCELLED, row["run_id"]))
                notes.append(Notification(NotificationKind.FINISHED, row["run_id"]))
            for row in rows:
                if row["parent_run_id"] is not None:
                    self._tell_parent(conn, notes, row["parent_run_id"], child_finished_event(
                        child=row["run_id"], namespace=row["namespace"], chapter=row["chapter"],
                        parent=row["parent_run_id"], status=RunStatus.CANCELLED.value,
                        result=None, error=row["error"], now=now), now)
            return self._get(conn, run_id)
        return await self._writer.run(op)

    def _tell_parent(self, conn: Conn, notes: Notes, parent: str, record: CloudEventRecord,
                     now: float) -> None:
        """Address a finished child's event to its parent (kept until the parent is purged)
        and resume the parent if it waits for it."""
        row = conn.execute("SELECT namespace FROM runs WHERE run_id = ?", (parent,)).fetchone()
        if row is not None:
            self._accept_one(conn, notes, row[0], record, now, expires_at=CHILD_EVENT_EXPIRY)

    # -- worker -------------------------------------------------------------------------
    async def claim_runs(self, worker_id: str, *, limit: int, lease_seconds: float,
                         workflows: Sequence[str] | None = None,
                         run_ids: Sequence[str] | None = None,
                         reclaim_own: bool = False,
                         recovering: bool = True,
                         scope: ClaimScope | None = None) -> list[ClaimedRun]:
        """Lease up to ``limit`` runnable runs and load their histories."""
        filters = sets = ""
        params: dict[str, Any] = {}
        if scope is not None:
            filters, sets, params = sqlite_scope(scope)
        if workflows is not None:
            names = {f"wf{i}": w for i, w in enumerate(workflows)}
            filters += f" AND workflow IN ({', '.join(':' + k for k in names) or 'NULL'})"
            params.update(names)
        if run_ids is not None:
            ids = {f"id{i}": r for i, r in enumerate(run_ids)}
            filters += f" AND run_id IN ({', '.join(':' + k for k in ids) or 'NULL'})"
            params.update(ids)
        sql = (
            "UPDATE runs SET status = 'running', lease_owner = :worker, lease_expires = :expires,"
            " epoch = epoch + 1, started_at = COALESCE(started_at, :now), updated_at = :now,"
            + (" recoveries = recoveries + (status = 'running')" if recovering else
               " recoveries = recoveries") + sets +
            f" WHERE run_id IN (SELECT run_id FROM runs WHERE {_RUNNABLE} {filters}"
            " ORDER BY created_at LIMIT :limit) RETURNING *"
        )

        def op(conn: Conn, notes: Notes) -> list[ClaimedRun]:
            now = self.clock()
            rows = conn.execute(sql, {**params, "now": now, "worker": worker_id,
                                      "expires": now + lease_seconds, "limit": limit,
                                      "reclaim": int(reclaim_own)}).fetchall()
            claimed = []
            for row in rows:
                run = run_from_row(row)
                claimed.append(ClaimedRun(run, Lease(run.run_id, worker_id, run.epoch),
                                          self._history(conn, run.run_id)))
                notes.append(Notification(NotificationKind.CLAIMED, run.run_id))
            return claimed
        return await self._writer.run(op)

    async def count_live_leases(self, worker_id: str) -> int:
        """Runs ``worker_id`` holds under an unexpired lease."""
        def op(conn: Conn, notes: Notes) -> int:
            return int(conn.execute(
                "SELECT COUNT(*) FROM runs WHERE status = 'running' AND lease_owner = ?"
                " AND lease_expires >= ?", (worker_id, self.clock())).fetchone()[0])
        return await self._writer.run(op)

    async def count_unfinished_by_build(self, *, due_before: float | None = None
                                        ) -> list[BuildCount]:
        """Unfinished runs by (namespace, pool, workflow, build, upgrade policy)."""
        def op(conn: Conn, notes: Notes) -> list[BuildCount]:
            rows = conn.execute(
                "SELECT namespace, pool, workflow, build_id, upgrade, COUNT(*) AS unfinished,"
                " SUM(status IN ('pending', 'running') OR wake_at <= :due) AS runnable"
                " FROM runs WHERE status IN ('pending', 'running', 'waiting_for_event',"
                " 'waiting_for_timer') GROUP BY namespace, pool, workflow, build_id, upgrade",
                {"due": due_before})
            return [BuildCount(r["namespace"], r["pool"], r["workflow"], r["build_id"],
                               r["upgrade"], int(r["unfinished"]), int(r["runnable"] or 0))
                    for r in rows]
        return await self._writer.run(op)

    async def renew_leases(self, worker_id: str, run_ids: Sequence[str],
                           lease_seconds: float) -> None:
        """Extend the leases this worker still holds."""
        ids = list(run_ids)

        def op(conn: Conn, notes: Notes) -> None:
            expires = self.clock() + lease_seconds
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ", ".join("?" * len(chunk))
                conn.execute(
                    "UPDATE runs SET lease_expires = ? WHERE lease_owner = ?"
                    f" AND status = 'running' AND run_id IN ({marks})",
                    (expires, worker_id, *chunk))
        if ids:
            await self._writer.run(op)

    def _fence(self, conn: Conn, lease: Lease, sets: str = "", params: dict[str, Any] | None = None,
               ) -> float:
        now = self.clock()
        cur = conn.execute(
            f"UPDATE runs SET updated_at = :now, recoveries = 0 {sets}"
            " WHERE run_id = :run_id AND epoch = :epoch"
            " AND status = 'running'",
            {"now": now, "run_id": lease.run_id, "epoch": lease.epoch, **(params or {})},
        )
        if cur.rowcount != 1:
            raise self._lost(conn, lease)
        return now

    @staticmethod
    def _lost(conn: Conn, lease: Lease) -> LeaseLost:
        row = conn.execute("SELECT epoch, lease_owner, status FROM runs WHERE run_id = ?",
                           (lease.run_id,)).fetchone()
        return lease_lost(lease, None if row is None else (row[0], row[1], row[2]))

    @staticmethod
    def _insert_steps(conn: Conn, run_id: str, steps: Sequence[Step],
                      table: str = "history", chapter: int | None = None) -> None:
        head, marks = ("run_id", "?") if chapter is None else ("run_id, chapter", "?, ?")
        conn.executemany(
            f"INSERT INTO {table} ({head}, {_HISTORY_COLUMNS}) VALUES ({marks}, ?, ?, ?, ?, ?,"
            " ?, ?)",
            [(run_id, *(() if chapter is None else (chapter,)), s.seq, s.kind.value, s.name,
              s.value, s.error, s.recorded_at, s.ordinal) for s in steps],
        )

    async def record_attempts(self, lease: Lease, attempts: Mapping[int, int]) -> None:
        """Record the activity attempts started, fenced by the lease."""
        text = attempts_to_text(attempts)

        def op(conn: Conn, notes: Notes) -> None:
            cur = conn.execute("UPDATE runs SET activity_attempts = ? WHERE run_id = ?"
                               " AND epoch = ? AND status = 'running'",
                               (text, lease.run_id, lease.epoch))
            if cur.rowcount != 1:
                raise self._lost(conn, lease)
        await self._writer.run(op)

    async def release_run(self, lease: Lease) -> None:
        """Hand a held run back as pending."""
        def op(conn: Conn, notes: Notes) -> None:
            try:
                self._fence(conn, lease, ", status = 'pending', lease_owner = NULL,"
                            " lease_expires = NULL, activity_attempts = NULL")
            except LeaseLost:
                return
            notes.append(Notification(NotificationKind.RUNNABLE, lease.run_id))
        await self._writer.run(op)

    async def append_steps(self, lease: Lease, steps: Sequence[Step],
                           outbox: Sequence[CloudEventRecord] = (), *,
                           attempts: Mapping[int, int] | None = None,
                           children: Sequence[NewRun] = ()) -> None:
        """Record steps and emitted events in one commit, fenced by the lease (and the
        activity attempts started, when given), and create the child runs given."""
        sets, params = ", " + _CLEAR_WAIT, _NO_WAIT
        if attempts is not None:
            sets += ", activity_attempts = :attempts"
            params = {**params, "attempts": attempts_to_text(attempts)}
        kids = [validate_new_run(child_of(lease, new)) for new in children]

        def op(conn: Conn, notes: Notes) -> None:
            now = self._fence(conn, lease, sets, params)
            self._insert_steps(conn, lease.run_id, steps)
            if outbox:
                namespace = conn.execute("SELECT namespace FROM runs WHERE run_id = ?",
                                         (lease.run_id,)).fetchone()[0]
                conn.executemany(
                    "INSERT INTO outbox (run_id, namespace, record, next_attempt_at, created_at)"
                    " VALUES (?, ?, ?, ?, ?)",
                    [(lease.run_id, namespace, record_to_json(r), now, now) for r in outbox])
                notes.append(Notification(NotificationKind.OUTBOX, lease.run_id))
            if kids:
                self._create_runs(conn, notes, kids)
        await self._writer.run(op)

    async def begin_waits(self, lease: Lease, waits: Sequence[Wait], steps: Sequence[Step] = (),
                          *, next_ordinal: int, suspend: bool = True) -> EventWaitResult:
        """Consume an event one of the event waits takes, or suspend the run on all waits
        (see ``Store.begin_waits``)."""
        return await self._begin_waits(lease, waits, steps, next_ordinal, suspend)

    async def begin_event_wait(self, lease: Lease, wait: Wait,
                               steps: Sequence[Step] = ()) -> EventWaitResult:
        """``begin_waits`` with one wait, delivered in the order of its seq."""
        return await self._begin_waits(lease, [wait], steps, wait.seq, True)

    async def suspend(self, lease: Lease, wait: Wait, steps: Sequence[Step] = ()) -> None:
        """``begin_waits`` with one timer or retry wait, delivered in the order of its seq."""
        await self._begin_waits(lease, [wait], steps, wait.seq, True)

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
            self._insert_steps(conn, lease.run_id, steps)
            namespace = conn.execute("SELECT namespace FROM runs WHERE run_id = ?",
                                     (lease.run_id,)).fetchone()[0]
            for wait in events:
                found = self._find_waiting_event(conn, namespace, lease.run_id, wait)
                if found is not None:
                    pk, record = found
                    step = self._deliver(conn, lease.run_id, wait, pk, record, now, ordinal)
                    conn.execute(f"UPDATE runs SET {_CLEAR_WAIT} WHERE run_id = :run_id",
                                 {"run_id": lease.run_id, **_NO_WAIT})
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

    @staticmethod
    def _deliver(conn: Conn, run_id: str, wait: Wait, pk: int, record: CloudEventRecord,
                 now: float, ordinal: int | None) -> Step:
        step = Step(wait.seq, StepKind.EVENT, wait.step_name, record_to_json(record), now,
                    ordinal=ordinal)
        conn.execute("INSERT INTO consumptions (run_id, event_pk) VALUES (?, ?)", (run_id, pk))
        SqliteStore._insert_steps(conn, run_id, [step])
        return step

    async def finish_run(self, lease: Lease, status: RunStatus, *, result: str | None = None,
                         error: str | None = None, steps: Sequence[Step] = ()) -> None:
        """End the run completed or failed; a child tells its parent in the same commit."""
        sets = (", status = :status, result = :result, error = :error, finished_at = :now,"
                f" lease_owner = NULL, lease_expires = NULL, {_CLEAR_WAIT}")
        params = {"status": status.value, "result": result, "error": error, **_NO_WAIT}

        def op(conn: Conn, notes: Notes) -> None:
            now = self._fence(conn, lease, sets, params)
            self._insert_steps(conn, lease.run_id, steps)
            notes.append(Notification(NotificationKind.FINISHED, lease.run_id))
            row = conn.execute("SELECT namespace, parent_run_id, chapter FROM runs"
                               " WHERE run_id = ?", (lease.run_id,)).fetchone()
            if row["parent_run_id"] is not None:
                self._tell_parent(conn, notes, row["parent_run_id"], child_finished_event(
                    child=lease.run_id, namespace=row["namespace"], chapter=row["chapter"],
                    parent=row["parent_run_id"], status=status.value, result=result,
                    error=error, now=now), now)
        await self._writer.run(op)

    async def continue_run(self, lease: Lease, input: str, steps: Sequence[Step] = ()) -> int:
        """Close the run's chapter (history and input archived) and make it pending again
        with ``input`` and an empty history; returns the new chapter's number."""
        check_size("input", input, MAX_INPUT_BYTES)

        def op(conn: Conn, notes: Notes) -> int:
            old = conn.execute("SELECT namespace, input, chapter FROM runs WHERE run_id = ?"
                               " AND epoch = ? AND status = 'running'",
                               (lease.run_id, lease.epoch)).fetchone()
            if old is None:
                raise self._lost(conn, lease)
            closed = int(old["chapter"])
            now = self._fence(conn, lease, ", status = 'pending', input = :input,"
                              " chapter = chapter + 1, lease_owner = NULL, lease_expires = NULL,"
                              " activity_attempts = NULL, result = NULL, error = NULL, "
                              + _CLEAR_WAIT, {"input": input, **_NO_WAIT})
            self._insert_steps(conn, lease.run_id, steps)
            moved = conn.execute(
                f"INSERT INTO history_chapters (run_id, chapter, {_HISTORY_COLUMNS})"
                f" SELECT run_id, ?, {_HISTORY_COLUMNS} FROM history WHERE run_id = ?",
                (closed, lease.run_id)).rowcount
            conn.execute("DELETE FROM history WHERE run_id = ?", (lease.run_id,))
            conn.execute("INSERT INTO chapters (run_id, chapter, namespace, input, closed_at,"
                         " steps) VALUES (?, ?, ?, ?, ?, ?)",
                         (lease.run_id, closed, old["namespace"], old["input"], now, moved))
            notes.append(Notification(NotificationKind.RUNNABLE, lease.run_id))
            return closed + 1
        return await self._writer.run(op)

    async def next_wake_at(self) -> float | None:
        """The earliest due time of a suspended run."""
        def op(conn: Conn, notes: Notes) -> float | None:
            row = conn.execute(
                "SELECT MIN(wake_at) FROM runs WHERE status IN ('waiting_for_event',"
                " 'waiting_for_timer') AND wake_at IS NOT NULL").fetchone()
            return None if row[0] is None else float(row[0])
        return await self._writer.run(op)

    # -- events -------------------------------------------------------------------------
    async def accept_events(self, namespace: str,
                            events: Sequence[CloudEventRecord]) -> list[AcceptResult]:
        """Commit events (deduplicated) and resume the runs waiting for them."""
        validate_events(namespace, events)

        def op(conn: Conn, notes: Notes) -> list[AcceptResult]:
            now = self.clock()
            return [self._accept_one(conn, notes, namespace, ev, now) for ev in events]
        return await self._writer.run(op)

    def _accept_one(self, conn: Conn, notes: Notes, namespace: str, ev: CloudEventRecord,
                    now: float, *, expires_at: float | None = None) -> AcceptResult:
        cur = conn.execute(
            "INSERT OR IGNORE INTO events (namespace, source, id, type, target_run, record,"
            " received_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (namespace, ev.source, ev.id, ev.type, ev.target_run, record_to_json(ev), now,
             now + self.event_retention if expires_at is None else expires_at))
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
            wait = next((w for w in waits_from_row(row) if w.kind is WaitKind.EVENT
                         and ev.type in w.event_types and event_matches(ev, w.match)), None)
            if wait is None:
                continue
            self._deliver(conn, row["run_id"], wait, pk, ev, now, row["wait_ordinal"])
            conn.execute(
                f"UPDATE runs SET status = 'pending', updated_at = :now, {_CLEAR_WAIT}"
                " WHERE run_id = :run_id", {"now": now, "run_id": row["run_id"], **_NO_WAIT})
            notes.append(Notification(NotificationKind.RUNNABLE, row["run_id"]))
            resumed.append(row["run_id"])
        return AcceptResult(AcceptOutcome.ACCEPTED, tuple(resumed))

    async def count_events(self) -> int:
        """How many events are kept."""
        def op(conn: Conn, notes: Notes) -> int:
            return int(conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        return await self._writer.run(op)

    async def purge_expired(self) -> int:
        """Drop events past their retention, with their consumption marks."""
        def op(conn: Conn, notes: Notes) -> int:
            now = self.clock()
            conn.execute("DELETE FROM consumptions WHERE event_pk IN"
                         " (SELECT pk FROM events WHERE expires_at < ?)", (now,))
            return conn.execute("DELETE FROM events WHERE expires_at < ?", (now,)).rowcount
        return await self._writer.run(op)

    # -- outbox -------------------------------------------------------------------------
    async def due_outbox(self, limit: int, claim_seconds: float = 30.0) -> list[OutboxEntry]:
        """Claim the entries whose next attempt is due (hidden from other dispatchers for
        ``claim_seconds``)."""
        def op(conn: Conn, notes: Notes) -> list[OutboxEntry]:
            now = self.clock()
            rows = conn.execute(
                "UPDATE outbox SET next_attempt_at = ? WHERE pk IN (SELECT pk FROM outbox"
                " WHERE next_attempt_at <= ? AND dead_at IS NULL ORDER BY pk LIMIT ?) RETURNING *",
                (now + claim_seconds, now, limit)).fetchall()
            return sorted((outbox_from_row(r) for r in rows), key=lambda e: e.pk)
        return await self._writer.run(op)

    async def outbox_done(self, pk: int) -> None:
        """Remove a published entry."""
        await self._writer.run(
            lambda conn, notes: conn.execute("DELETE FROM outbox WHERE pk = ?", (pk,)))

    async def outbox_retry(self, pk: int, next_attempt_at: float, error: str) -> None:
        """Count a failed publish and schedule the next."""
        await self._writer.run(lambda conn, notes: conn.execute(
            "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ?"
            " WHERE pk = ?", (next_attempt_at, error, pk)))

    async def outbox_dead(self, pk: int, error: str) -> None:
        """Mark an entry dead (kept, never retried until revived)."""
        await self._writer.run(lambda conn, notes: conn.execute(
            "UPDATE outbox SET attempts = attempts + 1, dead_at = ?, last_error = ?"
            " WHERE pk = ?", (self.clock(), error, pk)))

    async def list_outbox(self, *, dead: bool = False, limit: int = 100) -> list[OutboxEntry]:
        """Live (or dead) entries, oldest first."""
        def op(conn: Conn, notes: Notes) -> list[OutboxEntry]:
            rows = conn.execute("SELECT * FROM outbox WHERE (dead_at IS NOT NULL) = ?"
                                " ORDER BY pk LIMIT ?", (dead, limit)).fetchall()
            return [outbox_from_row(r) for r in rows]
        return await self._writer.run(op)

    async def revive_outbox(self, pks: Sequence[int] | None = None) -> int:
        """Make dead entries due again; returns how many."""
        def op(conn: Conn, notes: Notes) -> int:
            update = ("UPDATE outbox SET dead_at = NULL, attempts = 0, next_attempt_at = ?"
                      " WHERE dead_at IS NOT NULL")
            if pks is None:
                count = conn.execute(update, (self.clock(),)).rowcount
            else:
                count = sum(conn.execute(update + " AND pk = ?", (self.clock(), pk)).rowcount
                            for pk in pks)
            if count:
                notes.append(Notification(NotificationKind.OUTBOX))
            return count
        return await self._writer.run(op)

    async def count_outbox(self, *, dead: bool = False) -> int:
        """How many live (or dead) entries."""
        return await self._writer.run(lambda conn, notes: int(conn.execute(
            "SELECT count(*) FROM outbox WHERE (dead_at IS NOT NULL) = ?", (dead,))
            .fetchone()[0]))

    # -- operator -----------------------------------------------------------------------
    async def count_active_runs(self, *, wake_before: float) -> list[RunCount]:
        """Runs that need a worker, grouped by (namespace, workflow, pool)."""
        def op(conn: Conn, notes: Notes) -> list[RunCount]:
            return scans.run_counts(conn.execute(scans.SQLITE_COUNT_ACTIVE, (wake_before,)))
        return await self._writer.run(op)

    async def list_unfinished_runs(self, *, after: tuple[float, str] | None = None,
                                   limit: int = 1000) -> list[Run]:
        """Unfinished runs, oldest first, the page after ``after``."""
        def op(conn: Conn, notes: Notes) -> list[Run]:
            rows = conn.execute(scans.SQLITE_UNFINISHED_FIRST, (limit,)) if after is None \
                else conn.execute(scans.SQLITE_UNFINISHED_AFTER, (after[0], after[1], limit))
            return [run_from_row(r) for r in rows]
        return await self._writer.run(op)
