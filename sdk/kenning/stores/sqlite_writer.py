"""Group commit for SQLite: one thread owns the connection and commits batches of operations.

Concurrent callers each submit an operation; the thread runs all operations waiting at that
moment in one transaction, each under its own savepoint (one failing operation rolls back
alone), commits once, and only then resolves the callers' futures and hands the collected
notifications to the event loop. One fsync serves the whole batch. The queue is bounded
(``max_queue``): when it is full a caller gets ``StoreOverloaded`` at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from kenning.core.errors import StoreOverloaded, StoreUnavailable
from kenning.core.models import Notification

log = logging.getLogger(__name__)

T = TypeVar("T")
Operation = Callable[[sqlite3.Connection, list[Notification]], T]
_MAX_BATCH = 512


class _Job:
    __slots__ = ("future", "loop", "operation")

    def __init__(self, operation: Operation[Any], loop: asyncio.AbstractEventLoop) -> None:
        self.operation = operation
        self.loop = loop
        self.future: asyncio.Future[Any] = loop.create_future()


class GroupCommitWriter:
    """Runs store operations on a dedicated SQLite connection, committing them in batches."""

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        on_notifications: Callable[[list[Notification]], None],
        *,
        max_queue: int = 10_000,
    ) -> None:
        self._connect = connect
        self._max_queue = max_queue
        self._on_notifications = on_notifications
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    def start(self) -> None:
        """Open the connection on the writer thread; raise if that fails."""
        self._thread = threading.Thread(target=self._main, name="kenning-sqlite", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            raise StoreUnavailable(f"cannot open SQLite database: {self._startup_error}")

    async def run(self, operation: Operation[T]) -> T:
        """Run ``operation`` in the next batch; return its result after the commit."""
        if self._thread is None or not self._thread.is_alive():
            raise StoreUnavailable("the SQLite store is closed")
        if self._queue.qsize() >= self._max_queue:
            raise StoreOverloaded(
                f"the SQLite store has {self._max_queue} operations queued; retry shortly")
        job = _Job(operation, asyncio.get_running_loop())
        self._queue.put(job)
        result: T = await job.future
        return result

    def stop(self) -> None:
        """Finish queued operations and close the connection."""
        if self._thread is not None and self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _main(self) -> None:
        try:
            conn = self._connect()
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            while True:
                job = self._queue.get()
                if job is None:
                    return
                batch = [job]
                stop = False
                while len(batch) < _MAX_BATCH:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        stop = True
                        break
                    batch.append(nxt)
                try:
                    self._run_batch(conn, batch)
                except Exception as exc:  # never leave callers waiting on a dead thread
                    log.exception("SQLite batch failed unexpectedly")
                    with contextlib.suppress(sqlite3.Error):
                        if conn.in_transaction:
                            conn.execute("ROLLBACK")
                    self._fail_all(batch, exc)
                if stop:
                    return
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        notes: list[Notification] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            self._fail_all(batch, exc)
            return
        for job in batch:
            job_notes: list[Notification] = []
            conn.execute("SAVEPOINT op")
            try:
                value = job.operation(conn, job_notes)
            except Exception as exc:
                conn.execute("ROLLBACK TO op")
                conn.execute("RELEASE op")
                outcomes.append((job, None, exc))
                continue
            conn.execute("RELEASE op")
            outcomes.append((job, value, None))
            notes.extend(job_notes)
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            self._fail_all(batch, exc)
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Job, Any, BaseException | None]]] = {}
        for outcome in outcomes:
            by_loop.setdefault(outcome[0].loop, []).append(outcome)
        for index, (loop, items) in enumerate(by_loop.items()):
            loop.call_soon_threadsafe(self._deliver, items, notes if index == 0 else [])

    def _deliver(
        self, items: list[tuple[_Job, Any, BaseException | None]], notes: list[Notification]
    ) -> None:
        for job, value, exc in items:
            if job.future.done():
                continue
            if exc is None:
                job.future.set_result(value)
            else:
                job.future.set_exception(exc)
        if notes:
            self._on_notifications(notes)

    def _fail_all(self, batch: list[_Job], exc: BaseException) -> None:
        log.warning("SQLite batch of %d failed: %s", len(batch), exc)
        for job in batch:
            err = StoreUnavailable(f"SQLite commit failed: {exc}")
            job.loop.call_soon_threadsafe(_set_exception, job.future, err)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
