"""The embedded store: one SQLite file, WAL, group commit on a dedicated thread.

The store's methods come in parts, one module each: runs (``sqlite_runs``), claims and
fenced progress (``sqlite_claims``), waits and events (``sqlite_waits``, ``sqlite_accept``),
ends and continue-as-new (``sqlite_finish``), the outbox (``sqlite_outbox``) and retention
(``sqlite_retention``), over the plumbing they share (``sqlite_base``).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from kenning.core.errors import SchemaTooNew, StoreUnavailable
from kenning.core.store import Listener
from kenning.stores import sqlite_schema
from kenning.stores.listeners import ListenerSet
from kenning.stores.rows import DEFAULT_FINISHED_RETENTION
from kenning.stores.sqlite_base import Conn
from kenning.stores.sqlite_claims import SqliteClaims
from kenning.stores.sqlite_finish import SqliteFinish
from kenning.stores.sqlite_outbox import SqliteOutbox
from kenning.stores.sqlite_retention import SqliteRetention
from kenning.stores.sqlite_runs import SqliteRuns
from kenning.stores.sqlite_waits import SqliteWaits
from kenning.stores.sqlite_writer import GroupCommitWriter

__all__ = ["SqliteStore"]


class SqliteStore(SqliteRuns, SqliteClaims, SqliteWaits, SqliteFinish, SqliteOutbox,
                  SqliteRetention):
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
