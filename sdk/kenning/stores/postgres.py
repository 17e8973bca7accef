"""The cluster store: PostgreSQL through asyncpg, with group commit and LISTEN/NOTIFY.

Writes go through a few writer connections that share transactions (``postgres_writer``);
reads go straight through the pool. Every change that wakes someone is sent with
``pg_notify`` in its own transaction, so workers in other processes hear of it on commit.
The store's methods come in parts, one module each: runs (``postgres_runs``), claims and
fenced progress (``postgres_claims``), waits and events (``postgres_waits``), ends and
continue-as-new (``postgres_finish``), the outbox (``postgres_outbox``) and retention
(``postgres_retention``), over the plumbing they share (``postgres_base``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import asyncpg

from kenning.core.errors import ConfigurationError
from kenning.core.store import Listener
from kenning.stores import postgres_schema
from kenning.stores import postgres_sql as sql
from kenning.stores.db_clock import DatabaseClock
from kenning.stores.listeners import ListenerSet
from kenning.stores.postgres_base import Conn
from kenning.stores.postgres_claims import PostgresClaims
from kenning.stores.postgres_errors import connect_error, describe_target, is_connection_error
from kenning.stores.postgres_finish import PostgresFinish
from kenning.stores.postgres_listen import NotifyListener
from kenning.stores.postgres_outbox import PostgresOutbox
from kenning.stores.postgres_retention import PostgresRetention
from kenning.stores.postgres_runs import PostgresRuns
from kenning.stores.postgres_waits import PostgresWaits
from kenning.stores.postgres_writer import CHANNEL, GroupCommitWriter
from kenning.stores.rows import DEFAULT_FINISHED_RETENTION

__all__ = ["PostgresStore"]

log = logging.getLogger(__name__)


def _not_pool_floor(record: logging.LogRecord) -> bool:
    # asyncpg logs a traceback each time it fails to reopen its idle connection during an
    # outage; the outage is logged once by the loops that meet it, so drop these
    return not str(record.msg).startswith("Failed to restore the pool connection floor")


logging.getLogger("asyncpg.pool").addFilter(_not_pool_floor)


async def _reset_connection(conn: Conn) -> None:
    """Pool reset: our sessions keep no state, so only an open transaction is undone."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


class PostgresStore(PostgresRuns, PostgresClaims, PostgresWaits, PostgresFinish, PostgresOutbox,
                    PostgresRetention):
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

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Hear about committed changes: this process's at once, others' through LISTEN."""
        return self._listeners.add(listener)
