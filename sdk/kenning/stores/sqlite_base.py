"""What the parts of ``SqliteStore`` share: the group-commit writer, the lease fence of every
write under a lease, and reading and writing runs and steps on its connection."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from kenning.core.errors import LeaseLost, RunNotFound
from kenning.core.models import Lease, Notification, Run, Step
from kenning.stores.rows import lease_lost, run_from_row, step_from_row, wait_columns
from kenning.stores.sqlite_writer import GroupCommitWriter

Conn = sqlite3.Connection
Notes = list[Notification]

CLEAR_WAIT = ", ".join(f"{col} = :{col}" for col in wait_columns(()))
"""``wait_seq = :wait_seq, ...``: clears a run's waits with the parameters ``NO_WAIT``."""
NO_WAIT = wait_columns(())
HISTORY_COLUMNS = "seq, kind, name, value, error, recorded_at, ordinal"
UNFINISHED = "status NOT IN ('completed', 'failed', 'cancelled')"


def fetch_run(conn: Conn, run_id: str) -> Run:
    """The run, or ``RunNotFound``."""
    row = conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    if row is None:
        raise RunNotFound(f"no run with id '{run_id}'")
    return run_from_row(row)


def fetch_history(conn: Conn, run_id: str) -> list[Step]:
    """The run's current history in order."""
    rows = conn.execute("SELECT * FROM history WHERE run_id = ? ORDER BY seq", (run_id,))
    return [step_from_row(r) for r in rows]


def insert_steps(conn: Conn, run_id: str, steps: Sequence[Step]) -> None:
    """Append ``steps`` to the run's history."""
    conn.executemany(
        f"INSERT INTO history (run_id, {HISTORY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(run_id, s.seq, s.kind.value, s.name, s.value, s.error, s.recorded_at, s.ordinal)
         for s in steps],
    )


def lease_lost_error(conn: Conn, lease: Lease) -> LeaseLost:
    """The ``LeaseLost`` for a refused fenced write, saying who holds the run now."""
    row = conn.execute("SELECT epoch, lease_owner, status FROM runs WHERE run_id = ?",
                       (lease.run_id,)).fetchone()
    return lease_lost(lease, None if row is None else (row[0], row[1], row[2]))


class SqliteBase:
    """The plumbing every part of ``SqliteStore`` uses (its state is set up there)."""

    clock: Callable[[], float]
    event_retention: float
    finished_retention_default: float
    _writer: GroupCommitWriter

    def _fence(self, conn: Conn, lease: Lease, sets: str = "", params: dict[str, Any] | None = None,
               ) -> float:
        """Update the run held under ``lease`` (``sets``: more columns to set), or raise
        ``LeaseLost``; return the time used."""
        now = self.clock()
        cur = conn.execute(
            f"UPDATE runs SET updated_at = :now, recoveries = 0 {sets}"
            " WHERE run_id = :run_id AND epoch = :epoch"
            " AND status = 'running'",
            {"now": now, "run_id": lease.run_id, "epoch": lease.epoch, **(params or {})},
        )
        if cur.rowcount != 1:
            raise lease_lost_error(conn, lease)
        return now
