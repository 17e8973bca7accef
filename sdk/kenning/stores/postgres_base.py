"""What the parts of ``PostgresStore`` share: writes through the group commit, reads through
the pool, the time statements judge by, and the lease fence of every write under a lease."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from kenning.core.errors import LeaseLost, RunNotFound, StoreUnavailable
from kenning.core.models import Lease, Notification, Run, Step
from kenning.stores import postgres_sql as sql
from kenning.stores.db_clock import DatabaseClock
from kenning.stores.postgres_errors import is_connection_error, operation_error
from kenning.stores.postgres_writer import GroupCommitWriter, MergedOperation
from kenning.stores.rows import lease_lost, run_from_row

T = TypeVar("T")
Conn = Any  # asyncpg.Connection (asyncpg ships no type information)
Notes = list[Notification]


async def lease_lost_error(conn: Conn, lease: Lease) -> LeaseLost:
    """The ``LeaseLost`` for a refused fenced write, saying who holds the run now."""
    row = await conn.fetchrow(sql.LEASE_HOLDER, lease.run_id)
    return lease_lost(lease, None if row is None else (row["epoch"], row["lease_owner"],
                                                       row["status"]))


async def fetch_run(conn: Conn, run_id: str) -> Run:
    """The run, or ``RunNotFound``."""
    row = await conn.fetchrow(sql.GET_RUN, run_id)
    if row is None:
        raise RunNotFound(f"no run with id '{run_id}'")
    return run_from_row(row)


class PostgresBase:
    """The plumbing every part of ``PostgresStore`` uses (its state is set up there)."""

    clock: Callable[[], float]
    event_retention: float
    finished_retention_default: float
    _db_clock: DatabaseClock | None
    _pool: Any
    _writer: GroupCommitWriter | None

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

    async def _sample_clock(self, conn: Conn, query: str) -> Any:
        """Run ``query`` (its last column: the database's time); learn the clock from it."""
        sent = time.monotonic()
        row = await conn.fetchrow(query)
        if self._db_clock is not None:
            self._db_clock.observe(float(row[-1]), sent, time.monotonic())
        return row

    def _now(self) -> float:
        return float(self.clock())

    def _sql_now(self) -> float | None:
        """The time parameter of statements that judge time: ``None`` (the database's
        clock, in SQL) unless a clock was injected."""
        return None if self._db_clock is not None else self._now()

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
            raise await lease_lost_error(conn, lease)
        return row, now
