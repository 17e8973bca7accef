"""Group commit for PostgreSQL: a few writer tasks share one queue of operations.

A writer takes the operations waiting (all of them, or its share when other writers are
idle so that their transactions run in parallel) and runs them in one transaction on its
own connection, commits once, and only then resolves the callers' futures and hands the
notifications to the listeners. The transaction first takes the advisory locks its
operations declared, in key order (so batches never deadlock on them), then runs the
operations back to back without savepoints: a step is one round trip. Operations that can
merge (accepting events) run as one. If an operation fails with a database error, the
transaction is rolled back and the batch runs again with a savepoint around each operation,
so the failing one rolls back alone; one that lost a deadlock is queued again. If the
``COMMIT`` itself fails with a database error (a notification PostgreSQL refuses), the batch
runs again the same way, each operation's notifications sent inside its savepoint: one bad
member fails only its own caller. Operations may raise ``LeaseLost`` or ``RunNotFound`` only
before they wrote anything.

The queue is bounded (``max_queue``): when it is full a caller gets ``StoreOverloaded`` at
once instead of waiting behind work the database cannot keep up with.

Notifications also go to other processes: ``pg_notify('kenning', 'kind|run_id|wake_at')``
in the same transaction, sent with the ``COMMIT`` (delivered only if it commits).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from kenning.core.errors import LeaseLost, RunNotFound, StoreOverloaded, StoreUnavailable
from kenning.core.models import Notification
from kenning.core.outage import Outage
from kenning.stores.postgres_errors import RETRYABLE_ERRORS, is_connection_error, operation_error

log = logging.getLogger(__name__)

T = TypeVar("T")
Operation = Callable[[Any, list[Notification]], Awaitable[T]]
# Runs the payloads of several operations of one kind at once: one result and its
# notifications per payload, in order (e.g. every event of a batch in one INSERT).
MergedOperation = Callable[[Any, list[Any]], Awaitable[list[tuple[Any, list[Notification]]]]]
CHANNEL = "kenning"
_CLEAN_ERRORS = (LeaseLost, RunNotFound)  # raised before any write: the transaction is intact
_MAX_RETRIES = 5


class _Job:
    __slots__ = ("exclusive", "future", "merge", "operation", "payload", "retries", "shared")

    def __init__(self, operation: Operation[Any], exclusive: frozenset[int],
                 shared: frozenset[int], merge: MergedOperation | None, payload: Any) -> None:
        self.operation = operation
        self.exclusive = exclusive
        self.shared = shared
        self.merge = merge
        self.payload = payload
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.retries = 0


# (job, value, error, notes) of one operation in a batch
_Outcome = tuple[_Job, Any, BaseException | None, list[Notification]]


class _Dirty(Exception):
    """An operation failed after it may have written: redo the batch with savepoints."""


class _Unreachable(Exception):
    """The connection failed; ``committing`` when the outcome of the commit is unknown."""

    def __init__(self, cause: BaseException, *, committing: bool) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.committing = committing


def notify_payload(note: Notification) -> str:
    """The NOTIFY payload of a notification: ``kind|run_id|wake_at``."""
    wake = "" if note.wake_at is None else repr(float(note.wake_at))
    return f"{note.kind.value}|{note.run_id or ''}|{wake}"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _notify_sql(notes: Iterable[Notification]) -> str:
    return "".join(f"SELECT pg_notify('{CHANNEL}', {_literal(notify_payload(n))}); "
                   for n in dict.fromkeys(notes))


def _lock_sql(jobs: Iterable[_Job]) -> str:
    exclusive: set[int] = set()
    shared: set[int] = set()
    for job in jobs:
        exclusive |= job.exclusive
        shared |= job.shared
    return "".join(
        f"; SELECT pg_advisory_xact_lock{'' if key in exclusive else '_shared'}({key})"
        for key in sorted(exclusive | shared)
    )


class GroupCommitWriter:
    """Runs store operations in shared transactions on ``writers`` pooled connections."""

    def __init__(self, pool: Any, on_commit: Callable[[list[Notification]], None], *,
                 writers: int = 4, max_batch: int = 256, max_queue: int = 10_000) -> None:
        self._pool = pool
        self._max_queue = max_queue
        self._on_commit = on_commit
        self._writers = writers
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = True
        self._idle = 0
        self._outage = Outage("PostgreSQL writes", log)

    def start(self) -> None:
        """Start the writer tasks."""
        self._closed = False
        self._tasks = [asyncio.create_task(self._writer(i), name=f"kenning-pg-writer-{i}")
                       for i in range(self._writers)]

    async def run(self, operation: Operation[T], *, exclusive: Iterable[int] = (),
                  shared: Iterable[int] = (), merge: MergedOperation | None = None,
                  payload: Any = None) -> T:
        """Run ``operation(conn, notes)`` in the next batch; return its result after the
        commit. ``exclusive``/``shared`` are advisory lock keys taken before it runs.

        Operations given the same ``merge`` run together as ``merge(conn, payloads)`` when
        they share a batch; ``operation`` must do the same for its payload alone."""
        if self._closed:
            raise StoreUnavailable("the PostgreSQL store is closed")
        if self._queue.qsize() >= self._max_queue:
            raise StoreOverloaded(
                f"the PostgreSQL store has {self._max_queue} writes queued; retry shortly")
        job = _Job(operation, frozenset(exclusive), frozenset(shared), merge, payload)
        self._queue.put_nowait(job)
        result: T = await job.future
        return result

    async def stop(self) -> None:
        """Finish queued operations, then stop the writers."""
        self._closed = True
        for _ in self._tasks:
            self._queue.put_nowait(None)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # -- the writer loop ----------------------------------------------------------------
    async def _writer(self, index: int) -> None:
        conn: Any = None
        try:
            while True:
                self._idle += 1
                try:
                    job = await self._queue.get()
                finally:
                    self._idle -= 1
                if job is None:
                    return
                # Leave a share of the queue to the writers that are idle: their
                # transactions run in parallel with this one. Operations that merge cost
                # little more together than alone, so they do not count against the share.
                share = -(-(self._queue.qsize() + 1) // (self._idle + 1))
                batch, stop = [job], False
                alone = int(job.merge is None)
                while alone < share and len(batch) < self._max_batch and not self._queue.empty():
                    nxt = self._queue.get_nowait()
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                    alone += nxt.merge is None
                conn = await self._run_batch(conn, batch)
                if stop:
                    return
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await self._pool.release(conn)

    async def _run_batch(self, conn: Any, batch: list[_Job]) -> Any:
        """Run one batch (retrying once on a fresh connection if the old one was dead
        before the commit); return the connection to keep using."""
        jobs = [job for job in batch if not job.future.done()]  # callers that gave up
        for attempt in (1, 2):
            if not jobs:
                return conn
            try:
                if conn is None:
                    conn = await self._pool.acquire()
                outcomes = await self._transact(conn, jobs)
            except _Unreachable as exc:
                conn = await self._discard(conn)
                if exc.committing or attempt == 2:
                    self._fail(jobs, exc.cause, unknown=exc.committing)
                    return conn
                continue
            except Exception as exc:
                if is_connection_error(exc):  # acquiring a connection failed
                    conn = await self._discard(conn)
                    if attempt == 2:
                        self._fail(jobs, exc, unknown=False)
                        return conn
                    continue
                log.exception("PostgreSQL batch of %d failed", len(jobs))
                self._fail(jobs, exc, unknown=False)
                return await self._discard(conn)
            except BaseException as exc:  # cancelled: fail the callers, then go
                self._fail(jobs, exc, unknown=True)
                raise
            self._deliver(outcomes)
            return conn
        return conn

    async def _discard(self, conn: Any) -> Any:
        """Give a (possibly broken) connection back; the pool replaces a dead one."""
        if conn is not None:
            with contextlib.suppress(Exception):
                await self._pool.release(conn)
        return None

    async def _transact(self, conn: Any, jobs: list[_Job]) -> list[_Outcome]:
        begin = "BEGIN" + _lock_sql(jobs)
        await self._execute(conn, begin)
        try:
            outcomes = await self._run_direct(conn, jobs)
        except _Dirty:
            await self._execute(conn, "ROLLBACK; " + begin)
            outcomes = await self._run_with_savepoints(conn, jobs)
        else:
            notes = [note for _job, _value, error, ns in outcomes if error is None
                     for note in ns]
            try:
                await conn.execute(_notify_sql(notes) + "COMMIT")
                return outcomes
            except Exception as exc:
                if is_connection_error(exc):
                    raise _Unreachable(exc, committing=True) from exc
                # a database error at commit (a refused notification): nothing committed;
                # run again with each member's notifications inside its own savepoint
                log.info("PostgreSQL batch of %d failed at commit (%s); isolating members",
                         len(jobs), exc)
            await self._execute(conn, "ROLLBACK; " + begin)
            outcomes = await self._run_with_savepoints(conn, jobs)
        try:
            await conn.execute("COMMIT")
        except Exception as exc:
            if is_connection_error(exc):
                raise _Unreachable(exc, committing=True) from exc
            raise
        return outcomes

    @staticmethod
    async def _execute(conn: Any, sql: str) -> None:
        try:
            await conn.execute(sql)
        except Exception as exc:
            if is_connection_error(exc):
                raise _Unreachable(exc, committing=False) from exc
            raise

    @staticmethod
    async def _run_direct(conn: Any, jobs: list[_Job]) -> list[_Outcome]:
        outcomes: list[_Outcome] = []
        groups: dict[MergedOperation, list[_Job]] = {}
        for job in jobs:
            if job.merge is not None:
                groups.setdefault(job.merge, []).append(job)
        for job in jobs:
            if job.merge is not None:
                group = groups.pop(job.merge, None)
                if group is not None:  # the whole group runs where its first job stood
                    outcomes.extend(await GroupCommitWriter._run_merged(conn, job.merge, group))
                continue
            notes: list[Notification] = []
            try:
                value = await job.operation(conn, notes)
            except _CLEAN_ERRORS as exc:
                outcomes.append((job, None, exc, []))
                continue
            except Exception as exc:
                if is_connection_error(exc):
                    raise _Unreachable(exc, committing=False) from exc
                raise _Dirty from exc
            outcomes.append((job, value, None, notes))
        return outcomes

    @staticmethod
    async def _run_merged(conn: Any, merge: MergedOperation, group: list[_Job]) -> list[_Outcome]:
        try:
            results = await merge(conn, [job.payload for job in group])
        except Exception as exc:
            if is_connection_error(exc):
                raise _Unreachable(exc, committing=False) from exc
            raise _Dirty from exc
        return [(job, value, None, notes) for job, (value, notes) in zip(group, results,
                                                                          strict=True)]

    async def _run_with_savepoints(self, conn: Any, jobs: list[_Job]) -> list[_Outcome]:
        outcomes: list[_Outcome] = []
        release = ""
        for job in jobs:
            await self._execute(conn, release + "SAVEPOINT op")
            notes: list[Notification] = []
            try:
                value = await job.operation(conn, notes)
                if notes:  # sent here, so that a refused one fails this member alone
                    await conn.execute(_notify_sql(notes).rstrip("; "))
            except Exception as exc:
                if is_connection_error(exc):
                    raise _Unreachable(exc, committing=False) from exc
                await self._execute(conn, "ROLLBACK TO SAVEPOINT op")
                outcomes.append((job, None, exc, []))
                release = ""
                continue
            outcomes.append((job, value, None, notes))
            release = "RELEASE SAVEPOINT op; "
        if release:
            await self._execute(conn, "RELEASE SAVEPOINT op")
        return outcomes

    # -- results ------------------------------------------------------------------------
    def _deliver(self, outcomes: list[_Outcome]) -> None:
        self._outage.recovered()
        notes: list[Notification] = []
        for job, value, error, job_notes in outcomes:
            if error is not None and isinstance(error, RETRYABLE_ERRORS) and self._retry(job):
                continue
            if job.future.done():
                continue
            if error is None:
                job.future.set_result(value)
                notes.extend(job_notes)
            else:
                job.future.set_exception(error)
        if notes:
            self._on_commit(notes)

    def _retry(self, job: _Job) -> bool:
        if self._closed or job.retries >= _MAX_RETRIES:
            return False
        job.retries += 1
        log.info("PostgreSQL operation hit a deadlock; running it again (%d)", job.retries)
        self._queue.put_nowait(job)
        return True

    def _fail(self, jobs: list[_Job], cause: BaseException, *, unknown: bool) -> None:
        if isinstance(cause, Exception) and not is_connection_error(cause):
            error: BaseException = cause
            log.warning("PostgreSQL batch of %d failed: %s", len(jobs), error)
        else:
            error = operation_error(cause)
            if unknown:
                error = StoreUnavailable(f"{error} (the commit's outcome is unknown)")
            # an unreachable database fails every batch: logged once when it starts
            self._outage.failed(error)
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(error)
