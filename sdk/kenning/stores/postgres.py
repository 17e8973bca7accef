"""The cluster store: PostgreSQL through asyncpg, with group commit and LISTEN/NOTIFY.

Writes go through a few writer connections that share transactions (``postgres_writer``);
reads go straight through the pool. Every change that wakes someone is sent with
``pg_notify`` in its own transaction, so workers in other processes hear of it on commit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import asyncpg

from kenning.core.errors import ConfigurationError, LeaseLost, RunNotFound, StoreUnavailable
from kenning.core.events import record_from_json, record_to_json
from kenning.core.matching import event_matches
from kenning.core.models import (
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
from kenning.stores import postgres_match as match_sql
from kenning.stores import postgres_schema
from kenning.stores import postgres_sql as sql
from kenning.stores import run_scans as scans
from kenning.stores.claim_scope import postgres_scope_args
from kenning.stores.db_clock import DatabaseClock
from kenning.stores.listeners import ListenerSet
from kenning.stores.postgres_accept import Payload, accept_batches
from kenning.stores.postgres_errors import (
    connect_error,
    describe_target,
    is_connection_error,
    operation_error,
)
from kenning.stores.postgres_listen import NotifyListener
from kenning.stores.postgres_retention import PostgresRetention
from kenning.stores.postgres_writer import CHANNEL, GroupCommitWriter, MergedOperation
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
)

log = logging.getLogger(__name__)


def _not_pool_floor(record: logging.LogRecord) -> bool:
    # asyncpg logs a traceback each time it fails to reopen its idle connection during an
    # outage; the outage is logged once by the loops that meet it, so drop these
    return not str(record.msg).startswith("Failed to restore the pool connection floor")


logging.getLogger("asyncpg.pool").addFilter(_not_pool_floor)

T = TypeVar("T")
Conn = Any  # asyncpg.Connection (asyncpg ships no type information)
Notes = list[Notification]


async def _lease_lost(conn: Conn, lease: Lease) -> LeaseLost:
    """The ``LeaseLost`` for a refused fenced write, saying who holds the run now."""
    row = await conn.fetchrow(sql.LEASE_HOLDER, lease.run_id)
    return lease_lost(lease, None if row is None else (row["epoch"], row["lease_owner"],
                                                       row["status"]))


async def _reset_connection(conn: Conn) -> None:
    """Pool reset: our sessions keep no state, so only an open transaction is undone."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


class PostgresStore(PostgresRetention):
    """``Store`` on PostgreSQL; many processes may share the database.

    Args:
        dsn: a ``postgresql://`` URL (asyncpg syntax; ``?host=/run/postgresql`` for a socket).
        clock: unix seconds (tests inject a fake one). Without it, time is PostgreSQL's:
            leases, claims and due times are judged by its clock in SQL, and ``clock``
            estimates it locally (``DatabaseClock``), whatever this machine's clock says.
        event_retention: seconds an accepted event is kept for late waits and dedup.
        writers: connections that commit writes, each a transaction at a time.
        readers: further pooled connections for reads.
        max_batch: most operations one transaction takes.
        connect_timeout: seconds to wait for a connection.
        command_timeout: seconds before a statement is abandoned (``StoreUnavailable``).
        max_queue: most writes waiting for a writer; more get ``StoreOverloaded`` at once.
    """

    def __init__(
        self,
        dsn: str,
        *,
        clock: Callable[[], float] | None = None,
        event_retention: float = 86_400.0,
        writers: int = 4,
        readers: int = 4,
        max_batch: int = 256,
        connect_timeout: float = 10.0,
        command_timeout: float | None = 60.0,
        max_queue: int = 10_000,
    ) -> None:
        self.dsn = dsn
        self._db_clock = DatabaseClock() if clock is None else None
        self.clock: Callable[[], float] = clock or self._db_clock or time.time
        self.event_retention = float(event_retention)
        self.finished_retention_default = DEFAULT_FINISHED_RETENTION
        self._writers = writers
        self._readers = readers
        self._max_batch = max_batch
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._max_queue = max_queue
        self._listeners = ListenerSet()
        self._own_pids: set[int] = set()
        self._pool: Any = None
        self._writer: GroupCommitWriter | None = None
        self._listen: NotifyListener | None = None

    # -- lifecycle ----------------------------------------------------------------------
    async def open(self) -> None:
        """Connect, apply migrations and start listening; ``StoreUnavailable`` if the
        server cannot be reached, ``SchemaTooNew`` for a database of a newer Kenning."""
        if self._pool is not None:
            return
        pool = await self._create_pool()
        try:
            async with pool.acquire() as conn:
                found = await postgres_schema.migrate(conn)
                for _ in range(3):
                    await self._sample_clock(conn, sql.DB_TIME)
            listen = NotifyListener(self._connect, self._listeners.dispatch,
                                    self._own_pids.__contains__, CHANNEL)
            await listen.start()
        except BaseException as exc:
            pool.terminate()
            if is_connection_error(exc):
                raise connect_error(exc, self.dsn) from None
            raise
        self._pool, self._listen = pool, listen
        self._writer = GroupCommitWriter(pool, self._listeners.dispatch,
                                         writers=self._writers, max_batch=self._max_batch,
                                         max_queue=self._max_queue)
        self._writer.start()
        log.info("PostgreSQL store open on %s (schema %d, was %d)", describe_target(self.dsn),
                 postgres_schema.SCHEMA_VERSION, found)

    async def _create_pool(self) -> Any:
        try:
            return await asyncpg.create_pool(
                self.dsn, min_size=1, max_size=self._writers + self._readers,
                max_queries=10_000_000, init=self._init_connection, reset=_reset_connection,
                timeout=self._connect_timeout, command_timeout=self._command_timeout,
                server_settings={"application_name": "kenning"})
        except (asyncpg.ClientConfigurationError, ValueError) as exc:
            raise ConfigurationError(f"invalid PostgreSQL URL: {exc}") from None
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise connect_error(exc, self.dsn) from None

    async def _connect(self) -> Conn:
        return await asyncpg.connect(self.dsn, timeout=self._connect_timeout,
                                     server_settings={"application_name": "kenning-listen"})

    async def _init_connection(self, conn: Conn) -> None:
        pid = conn.get_server_pid()
        self._own_pids.add(pid)  # NOTIFYs from these backends are our own echoes
        conn.add_termination_listener(lambda _conn: self._own_pids.discard(pid))

    async def close(self) -> None:
        """Finish queued writes, stop listening and close the connections."""
        writer, listen, pool = self._writer, self._listen, self._pool
        self._writer = self._listen = self._pool = None
        if writer is not None:
            await writer.stop()
        if listen is not None:
            await listen.stop()
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 5.0)
            except Exception:
                pool.terminate()

    async def ping(self) -> None:
        """Raise ``StoreUnavailable`` unless the database answers."""
        await self._read(lambda conn: self._sample_clock(conn, sql.DB_TIME))

    async def _sample_clock(self, conn: Conn, query: str) -> Any:
        """Run ``query`` (its last column: the database's time); learn the clock from it."""
        sent = time.monotonic()
        row = await conn.fetchrow(query)
        if self._db_clock is not None:
            self._db_clock.observe(float(row[-1]), sent, time.monotonic())
        return row

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Hear about committed changes: this process's at once, others' through LISTEN."""
        return self._listeners.add(listener)

    async def _write(self, op: Callable[[Conn, Notes], Awaitable[T]], *,
                     exclusive: Sequence[int] = (), shared: Sequence[int] = (),
                     merge: MergedOperation | None = None, payload: Any = None) -> T:
        if self._writer is None:
            raise StoreUnavailable("the PostgreSQL store is not open")
        return await self._writer.run(op, exclusive=exclusive, shared=shared, merge=merge,
                                      payload=payload)

    async def _read(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """Run a read on a pooled connection; a dead connection is replaced once."""
        for attempt in (1, 2):
            pool = self._pool
            if pool is None:
                raise StoreUnavailable("the PostgreSQL store is not open")
            try:
                async with pool.acquire() as conn:
                    return await fn(conn)
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                if attempt == 2:
                    raise operation_error(exc) from None
        raise AssertionError("unreachable")

    def _now(self) -> float:
        return float(self.clock())

    def _sql_now(self) -> float | None:
        """The time parameter of statements that judge time: ``None`` (the database's
        clock, in SQL) unless a clock was injected."""
        return None if self._db_clock is not None else self._now()

    # -- runs ---------------------------------------------------------------------------
    async def create_run(self, new: NewRun) -> tuple[Run, bool]:
        """Create a pending run; an existing id returns that run unchanged."""
        validate_new_run(new)

        async def op(conn: Conn, notes: Notes) -> tuple[Run, bool]:
            row = await conn.fetchrow(sql.CREATE_RUN, new.run_id, new.namespace, new.workflow,
                                      new.input, self._now(), new.pool, json.dumps(new.labels),
                                      new.build_id, new.upgrade, new.parent_run_id)
            if row is not None:
                notes.append(Notification(NotificationKind.RUNNABLE, new.run_id))
                return run_from_row(row), True
            return await self._get(conn, new.run_id), False
        return await self._write(op)

    async def create_runs(self, news: Sequence[NewRun]) -> list[tuple[bool, str]]:
        """Create many pending runs in one statement (idempotent per id)."""
        batch = [validate_new_run(new) for new in news]
        if not batch:
            return []

        async def op(conn: Conn, notes: Notes) -> list[tuple[bool, str]]:
            return await self._create_runs(conn, notes, batch)
        return await self._write(op)

    async def _create_runs(self, conn: Conn, notes: Notes, batch: list[NewRun]
                           ) -> list[tuple[bool, str]]:
        rows = await conn.fetch(
            sql.CREATE_RUNS, self._now(), [n.run_id for n in batch],
            [n.namespace for n in batch], [n.workflow for n in batch],
            [n.input for n in batch], [n.pool for n in batch],
            [json.dumps(n.labels) for n in batch], [n.build_id for n in batch],
            [n.upgrade for n in batch], [n.parent_run_id for n in batch])
        found = {row["run_id"]: (bool(row["created"]), row["workflow"]) for row in rows}
        notes.extend(runnable_notes([i for i, (made, _) in found.items() if made]))
        return first_created(batch, found)

    @staticmethod
    async def _get(conn: Conn, run_id: str) -> Run:
        row = await conn.fetchrow(sql.GET_RUN, run_id)
        if row is None:
            raise RunNotFound(f"no run with id '{run_id}'")
        return run_from_row(row)

    async def get_run(self, run_id: str) -> Run | None:
        """The run, or ``None``."""
        row = await self._read(lambda conn: conn.fetchrow(sql.GET_RUN, run_id))
        return None if row is None else run_from_row(row)

    async def list_runs(self, *, namespace: str | None = None, status: RunStatus | None = None,
                        workflow: str | None = None, parent: str | None = None,
                        limit: int = 100) -> list[Run]:
        """Runs, newest first (``parent``: the children of that run)."""
        status_value = status.value if status is not None else None
        query = sql.list_runs(namespace=namespace is not None, status=status is not None,
                              workflow=workflow is not None, parent=parent is not None)
        args = [v for v in (namespace, status_value, workflow, parent) if v is not None]
        rows = await self._read(lambda conn: conn.fetch(query, *args, limit))
        return [run_from_row(r) for r in rows]

    async def load_history(self, run_id: str, *, chapter: int | None = None) -> list[Step]:
        """The run's history in order (one query): the current chapter, or ``chapter``."""
        if chapter is None:
            rows = await self._read(lambda conn: conn.fetch(sql.HISTORY, run_id))
        else:
            rows = await self._read(lambda conn: conn.fetch(sql.CHAPTER_HISTORY, run_id,
                                                            int(chapter)))
        return [step_from_row(r) for r in rows]

    async def list_chapters(self, run_id: str) -> list[Chapter]:
        """The run's closed chapters, oldest first."""
        rows = await self._read(lambda conn: conn.fetch(sql.CHAPTERS, run_id))
        return [chapter_from_row(r) for r in rows]

    async def cancel_run(self, run_id: str, reason: str) -> Run:
        """Cancel an unfinished run and its unfinished descendants, fencing out their
        workers; each cancelled child tells its parent."""
        async def op(conn: Conn, notes: Notes) -> Run:
            now = self._now()
            rows = await conn.fetch(sql.CANCEL, run_id, reason, now,
                                    f"cancelled with {run_id}: {reason}")
            top = next((row for row in rows if row["run_id"] == run_id), None)
            if top is None:
                return await self._get(conn, run_id)
            for row in rows:
                notes.append(Notification(NotificationKind.CANCELLED, row["run_id"]))
                notes.append(Notification(NotificationKind.FINISHED, row["run_id"]))
            await self._tell_parents(conn, notes, [
                (row["parent_namespace"], child_finished_event(
                    child=row["run_id"], namespace=row["namespace"], chapter=row["chapter"],
                    parent=row["parent_run_id"], status=RunStatus.CANCELLED.value,
                    result=None, error=row["error"], now=now))
                for row in rows if row["parent_namespace"] is not None], now)
            return run_from_row(top)
        return await self._write(op)

    async def _tell_parents(self, conn: Conn, notes: Notes,
                            events: list[tuple[str, CloudEventRecord]], now: float) -> None:
        """Address finished children's events to their parents (kept until the parent is
        purged) and resume the parents that wait for them."""
        if not events:
            return
        by_namespace: dict[str, list[CloudEventRecord]] = defaultdict(list)
        for namespace, record in events:
            by_namespace[namespace].append(record)
        for _results, accepted in await accept_batches(
                conn, list(by_namespace.items()), now, CHILD_EVENT_EXPIRY):
            notes.extend(accepted)

    # -- worker -------------------------------------------------------------------------
    async def claim_runs(self, worker_id: str, *, limit: int, lease_seconds: float,
                         workflows: Sequence[str] | None = None,
                         run_ids: Sequence[str] | None = None,
                         reclaim_own: bool = False,
                         recovering: bool = True,
                         scope: ClaimScope | None = None) -> list[ClaimedRun]:
        """Lease up to ``limit`` runnable runs (``FOR UPDATE SKIP LOCKED``) and load all
        their histories in one query."""
        if limit <= 0:
            return []
        query = sql.claim(workflows=workflows is not None, run_ids=run_ids is not None,
                          reclaim=reclaim_own, recovering=recovering,
                          scoped=scope is not None)
        filters: list[Any] = [list(f) for f in (workflows, run_ids) if f is not None]
        if scope is not None:
            filters += postgres_scope_args(scope)

        async def op(conn: Conn, notes: Notes) -> list[ClaimedRun]:
            rows = await conn.fetch(query, worker_id, float(lease_seconds), self._sql_now(),
                                    limit, *filters)
            if not rows:
                return []
            runs = sorted((run_from_row(r) for r in rows), key=lambda r: (r.created_at, r.run_id))
            histories: dict[str, list[Step]] = {run.run_id: [] for run in runs}
            for row in await conn.fetch(sql.HISTORIES, list(histories)):
                histories[row["run_id"]].append(step_from_row(row))
            notes.extend(Notification(NotificationKind.CLAIMED, run.run_id) for run in runs)
            return [ClaimedRun(run, Lease(run.run_id, worker_id, run.epoch),
                               histories[run.run_id]) for run in runs]
        return await self._write(op)

    async def count_live_leases(self, worker_id: str) -> int:
        """Runs ``worker_id`` holds under an unexpired lease."""
        now = self._sql_now()
        return int(await self._read(lambda conn: conn.fetchval(sql.LIVE_LEASES, worker_id, now)))

    async def count_unfinished_by_build(self, *, due_before: float | None = None
                                        ) -> list[BuildCount]:
        """Unfinished runs by (namespace, pool, workflow, build, upgrade policy)."""
        due = None if due_before is None else float(due_before)
        rows = await self._read(lambda conn: conn.fetch(sql.UNFINISHED_BY_BUILD, due))
        return [BuildCount(r["namespace"], r["pool"], r["workflow"], r["build_id"],
                           r["upgrade"], int(r["unfinished"]), int(r["runnable"]))
                for r in rows]

    async def renew_leases(self, worker_id: str, run_ids: Sequence[str],
                           lease_seconds: float) -> None:
        """Extend the leases this worker still holds."""
        ids = list(run_ids)
        if not ids:
            return

        async def op(conn: Conn, notes: Notes) -> None:
            await conn.execute(sql.RENEW, float(lease_seconds), worker_id, ids,
                               self._sql_now())
        await self._write(op)

    async def _fenced(self, conn: Conn, query: str, lease: Lease, steps: Sequence[Step],
                      *extra: Any) -> tuple[str, float]:
        """Run a fenced statement; return the run's namespace and the time used."""
        row, now = await self._fenced_row(conn, query, lease, steps, *extra)
        return row[0], now

    async def _fenced_row(self, conn: Conn, query: str, lease: Lease, steps: Sequence[Step],
                          *extra: Any) -> tuple[Any, float]:
        """Run a fenced statement; return the row it selects and the time used."""
        now = self._now()
        row = await conn.fetchrow(query, lease.run_id, lease.epoch, self._sql_now(),
                                  *sql.step_arrays(steps), *extra)
        if row is None:
            raise await _lease_lost(conn, lease)
        return row, now

    async def record_attempts(self, lease: Lease, attempts: Mapping[int, int]) -> None:
        """Record the activity attempts started, fenced by the lease."""
        text = attempts_to_text(attempts)

        async def op(conn: Conn, notes: Notes) -> None:
            if await conn.fetchval(sql.RECORD_ATTEMPTS, lease.run_id, lease.epoch, text) is None:
                raise await _lease_lost(conn, lease)
        await self._write(op)

    async def release_run(self, lease: Lease) -> None:
        """Hand a held run back as pending (a lost lease is no error)."""
        async def op(conn: Conn, notes: Notes) -> None:
            try:
                await self._fenced(conn, sql.RELEASE, lease, ())
            except LeaseLost:
                return
            notes.append(Notification(NotificationKind.RUNNABLE, lease.run_id))
        await self._write(op)

    async def append_steps(self, lease: Lease, steps: Sequence[Step],
                           outbox: Sequence[CloudEventRecord] = (), *,
                           attempts: Mapping[int, int] | None = None,
                           children: Sequence[NewRun] = ()) -> None:
        """Record steps and emitted events in one statement, fenced by the lease (and the
        activity attempts started, when given); child runs to start take one more."""
        records = [record_to_json(r) for r in outbox]
        extra: tuple[Any, ...] = (records,)
        query = sql.APPEND
        if attempts is not None:
            query, extra = sql.APPEND_WITH_ATTEMPTS, (records, attempts_to_text(attempts))
        kids = [validate_new_run(child_of(lease, new)) for new in children]

        async def op(conn: Conn, notes: Notes) -> None:
            await self._fenced(conn, query, lease, steps, *extra)
            if records:
                notes.append(Notification(NotificationKind.OUTBOX, lease.run_id))
            if kids:
                await self._create_runs(conn, notes, kids)
        await self._write(op)

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
        """The run row is locked by the fence before events are searched, and, when the
        run may suspend, the advisory lock of each event type waited for is held
        exclusively, so no concurrent ``accept_events`` can commit a matching event that
        neither side sees. A look without suspending needs no lock: an event it misses came
        after the waits began, so the wait that suspends later finds it."""
        ordered = sorted(waits, key=lambda w: w.seq)
        if suspend and not ordered:
            raise ValueError("begin_waits: nothing to suspend on (no waits)")
        events = [w for w in ordered if w.kind is WaitKind.EVENT]
        if not events:
            return await self._suspend_on_timers(lease, ordered, steps, ordinal, suspend)
        wake_at = earliest_wake(ordered)

        async def op(conn: Conn, notes: Notes) -> EventWaitResult:
            namespace, now = await self._fenced(conn, sql.FENCE_ONLY, lease, steps)
            for wait in events:
                found = await self._find_event(conn, namespace, lease.run_id, wait)
                if found is not None:
                    pk, record = found
                    step = Step(wait.seq, StepKind.EVENT, wait.step_name, record_to_json(record),
                                now, ordinal=ordinal)
                    await conn.execute(sql.DELIVER, lease.run_id, pk, wait.seq, step.name,
                                       step.value, now, ordinal)
                    return EventWaitResult(step)
            if not suspend:
                return EventWaitResult(None)
            await conn.execute(match_sql.WAIT_FOR_EVENT, lease.run_id,
                               *sql.wait_params(ordered, ordinal),
                               *match_sql.wait_key_params(events))
            if wake_at is not None:
                notes.append(Notification(NotificationKind.TIMER, lease.run_id, wake_at))
            else:
                notes.append(Notification(NotificationKind.WAITING, lease.run_id))
            return EventWaitResult(None)
        keys = sorted({sql.event_lock_key(t) for w in events for t in w.event_types}
                      if suspend else ())
        return await self._write(op, exclusive=keys)

    async def _suspend_on_timers(self, lease: Lease, waits: list[Wait], steps: Sequence[Step],
                                 ordinal: int, suspend: bool) -> EventWaitResult:
        """Suspend on timers and retry delays only (one statement), or just record steps."""
        if not suspend:
            async def record(conn: Conn, notes: Notes) -> EventWaitResult:
                await self._fenced(conn, sql.FENCE_ONLY, lease, steps)
                return EventWaitResult(None)
            return await self._write(record)
        params = sql.wait_params(waits, ordinal)
        wake_at = earliest_wake(waits)

        async def op(conn: Conn, notes: Notes) -> EventWaitResult:
            await self._fenced(conn, sql.SUSPEND, lease, steps, *params)
            notes.append(Notification(NotificationKind.TIMER, lease.run_id, wake_at))
            return EventWaitResult(None)
        return await self._write(op)

    async def _find_event(self, conn: Conn, namespace: str, run_id: str,
                          wait: Wait) -> tuple[int, CloudEventRecord] | None:
        since = float((wait.started_at or self.clock()) - (wait.lookback or 0.0))
        async for row in conn.cursor(sql.FIND_EVENTS, namespace, list(wait.event_types),
                                     run_id, since, prefetch=50):
            record = record_from_json(row["record"])
            if record.type in wait.event_types and event_matches(record, wait.match):
                return int(row["pk"]), record
        return None

    async def finish_run(self, lease: Lease, status: RunStatus, *, result: str | None = None,
                         error: str | None = None, steps: Sequence[Step] = ()) -> None:
        """End the run completed or failed; a child tells its parent in the same commit."""
        async def op(conn: Conn, notes: Notes) -> None:
            row, now = await self._fenced_row(conn, sql.FINISH, lease, steps, status.value,
                                              result, error)
            notes.append(Notification(NotificationKind.FINISHED, lease.run_id))
            if row["parent_namespace"] is not None:
                record = child_finished_event(
                    child=lease.run_id, namespace=row["namespace"], chapter=row["chapter"],
                    parent=row["parent_run_id"], status=status.value, result=result,
                    error=error, now=now)
                await self._tell_parents(conn, notes, [(row["parent_namespace"], record)], now)
        await self._write(op)

    async def continue_run(self, lease: Lease, input: str, steps: Sequence[Step] = ()) -> int:
        """Close the run's chapter (history and input archived) and make it pending again
        with ``input`` and an empty history; returns the new chapter's number."""
        check_size("input", input, MAX_INPUT_BYTES)

        async def op(conn: Conn, notes: Notes) -> int:
            row, _now = await self._fenced_row(conn, sql.CONTINUE, lease, steps, input)
            notes.append(Notification(NotificationKind.RUNNABLE, lease.run_id))
            return int(row["chapter"])
        return await self._write(op)

    async def next_wake_at(self) -> float | None:
        """The earliest due time of a suspended run."""
        row = await self._read(lambda conn: self._sample_clock(conn, sql.NEXT_WAKE_TIMED))
        return None if row[0] is None else float(row[0])

    # -- events -------------------------------------------------------------------------
    async def accept_events(self, namespace: str,
                            events: Sequence[CloudEventRecord]) -> list[AcceptResult]:
        """Commit events (deduplicated on source and id) and resume the runs waiting for
        them; returns after the commit. Concurrent calls share one INSERT."""
        payload: Payload = (namespace, list(events))
        if not payload[1]:
            return []
        validate_events(namespace, payload[1])
        keys = sorted({sql.event_lock_key(ev.type) for ev in payload[1] if ev.target_run is None})

        async def op(conn: Conn, notes: Notes) -> list[AcceptResult]:
            [(results, accepted)] = await self._accept_batches(conn, [payload])
            notes.extend(accepted)
            return results
        return await self._write(op, shared=keys, merge=self._accept_batches, payload=payload)

    async def _accept_batches(self, conn: Conn, payloads: list[Payload]
                              ) -> list[tuple[list[AcceptResult], list[Notification]]]:
        return await accept_batches(conn, payloads, self._now(), self.event_retention)

    async def count_events(self) -> int:
        """How many events are kept."""
        return int(await self._read(lambda conn: conn.fetchval(sql.COUNT_EVENTS)))

    async def purge_expired(self) -> int:
        """Drop events past their retention, with their consumption marks."""
        async def op(conn: Conn, notes: Notes) -> int:
            return int(await conn.fetchval(sql.PURGE, self._now()))
        return await self._write(op)

    # -- outbox -------------------------------------------------------------------------
    async def due_outbox(self, limit: int, claim_seconds: float = 30.0) -> list[OutboxEntry]:
        """Claim the entries whose next attempt is due (hidden from other dispatchers for
        ``claim_seconds``)."""
        async def op(conn: Conn, notes: Notes) -> list[OutboxEntry]:
            rows = await conn.fetch(sql.DUE_OUTBOX, self._now(), limit, claim_seconds)
            return sorted((outbox_from_row(r) for r in rows), key=lambda e: e.pk)
        return await self._write(op)

    async def outbox_done(self, pk: int) -> None:
        """Remove a published entry."""
        async def op(conn: Conn, notes: Notes) -> None:
            await conn.execute(sql.OUTBOX_DONE, pk)
        await self._write(op)

    async def outbox_retry(self, pk: int, next_attempt_at: float, error: str) -> None:
        """Count a failed publish and schedule the next."""
        async def op(conn: Conn, notes: Notes) -> None:
            await conn.execute(sql.OUTBOX_RETRY, pk, float(next_attempt_at), error)
        await self._write(op)

    async def outbox_dead(self, pk: int, error: str) -> None:
        """Mark an entry dead (kept, never retried until revived)."""
        async def op(conn: Conn, notes: Notes) -> None:
            await conn.execute(sql.OUTBOX_DEAD, pk, self._now(), error)
        await self._write(op)

    async def list_outbox(self, *, dead: bool = False, limit: int = 100) -> list[OutboxEntry]:
        """Live (or dead) entries, oldest first."""
        rows = await self._read(lambda conn: conn.fetch(sql.LIST_OUTBOX, dead, limit))
        return [outbox_from_row(r) for r in rows]

    async def revive_outbox(self, pks: Sequence[int] | None = None) -> int:
        """Make dead entries due again; returns how many."""
        async def op(conn: Conn, notes: Notes) -> int:
            done = await conn.execute(sql.REVIVE_OUTBOX, self._now(),
                                      None if pks is None else list(pks))
            count = int(done.split()[-1])
            if count:
                notes.append(Notification(NotificationKind.OUTBOX))
            return count
        return await self._write(op)

    async def count_outbox(self, *, dead: bool = False) -> int:
        """How many live (or dead) entries."""
        return int(await self._read(lambda conn: conn.fetchval(sql.COUNT_OUTBOX, dead)))

    # -- operator -----------------------------------------------------------------------
    async def count_active_runs(self, *, wake_before: float) -> list[RunCount]:
        """Runs that need a worker, grouped by (namespace, workflow, pool)."""
        rows = await self._read(lambda conn: conn.fetch(scans.PG_COUNT_ACTIVE,
                                                        float(wake_before)))
        return scans.run_counts(rows)

    async def list_unfinished_runs(self, *, after: tuple[float, str] | None = None,
                                   limit: int = 1000) -> list[Run]:
        """Unfinished runs, oldest first, the page after ``after``."""
        if after is None:
            rows = await self._read(lambda conn: conn.fetch(scans.PG_UNFINISHED_FIRST, limit))
        else:
            rows = await self._read(lambda conn: conn.fetch(
                scans.PG_UNFINISHED_AFTER, limit, float(after[0]), after[1]))
        return [run_from_row(r) for r in rows]
