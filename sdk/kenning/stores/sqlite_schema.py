"""The SQLite schema, versioned with ``PRAGMA user_version``."""

from __future__ import annotations

import sqlite3

from kenning.core.errors import SchemaTooNew

MIGRATIONS: list[str] = [
    # 1: runs, history, events, consumptions, outbox
    """
    CREATE TABLE runs (
        run_id TEXT PRIMARY KEY,
        namespace TEXT NOT NULL,
        workflow TEXT NOT NULL,
        input TEXT NOT NULL,
        status TEXT NOT NULL,
        result TEXT,
        error TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        updated_at REAL,
        lease_owner TEXT,
        lease_expires REAL,
        epoch INTEGER NOT NULL DEFAULT 0,
        wait_seq INTEGER,
        wait_kind TEXT,
        wake_at REAL,
        wait_type TEXT,
        wait_match TEXT,
        wait_lookback REAL,
        wait_started REAL,
        wait_attempt INTEGER NOT NULL DEFAULT 0,
        wait_error TEXT,
        pool TEXT,
        labels TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX runs_active ON runs(status) WHERE status IN ('pending', 'running');
    CREATE INDEX runs_due ON runs(wake_at)
        WHERE status IN ('waiting_for_event', 'waiting_for_timer') AND wake_at IS NOT NULL;
    CREATE INDEX runs_waiting_type ON runs(namespace, wait_type)
        WHERE status = 'waiting_for_event';
    CREATE INDEX runs_created ON runs(created_at);
    CREATE TABLE history (
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        value TEXT,
        error TEXT,
        recorded_at REAL NOT NULL,
        PRIMARY KEY (run_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        pk INTEGER PRIMARY KEY AUTOINCREMENT,
        namespace TEXT NOT NULL,
        source TEXT NOT NULL,
        id TEXT NOT NULL,
        type TEXT NOT NULL,
        target_run TEXT,
        record TEXT NOT NULL,
        received_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        UNIQUE (source, id)
    );
    CREATE INDEX events_kept ON events(namespace, type, received_at);
    CREATE INDEX events_inbox ON events(target_run, type) WHERE target_run IS NOT NULL;
    CREATE INDEX events_expiry ON events(expires_at);
    CREATE TABLE consumptions (
        run_id TEXT NOT NULL,
        event_pk INTEGER NOT NULL,
        PRIMARY KEY (run_id, event_pk)
    ) WITHOUT ROWID;
    CREATE TABLE outbox (
        pk INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL,
        namespace TEXT NOT NULL,
        record TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        last_error TEXT,
        created_at REAL NOT NULL
    );
    CREATE INDEX outbox_due ON outbox(next_attempt_at);
    """,
    # 2: the match keys of waiting runs, indexed; claim indexes; retention of finished runs
    """
    CREATE TABLE wait_keys (
        namespace TEXT NOT NULL,
        event_type TEXT NOT NULL,
        path TEXT NOT NULL,
        value TEXT NOT NULL,
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        nkeys INTEGER NOT NULL,
        PRIMARY KEY (namespace, event_type, path, value, run_id)
    ) WITHOUT ROWID;
    CREATE INDEX wait_keys_run ON wait_keys(run_id);
    CREATE TABLE wait_paths (
        namespace TEXT NOT NULL,
        event_type TEXT NOT NULL,
        path TEXT NOT NULL,
        PRIMARY KEY (namespace, event_type, path)
    ) WITHOUT ROWID;
    CREATE TRIGGER runs_stop_waiting AFTER UPDATE OF status ON runs
        WHEN OLD.status = 'waiting_for_event' AND NEW.status <> 'waiting_for_event'
    BEGIN
        DELETE FROM wait_keys WHERE run_id = OLD.run_id;
    END;
    CREATE TRIGGER runs_deleted_waiting AFTER DELETE ON runs
        WHEN OLD.status = 'waiting_for_event'
    BEGIN
        DELETE FROM wait_keys WHERE run_id = OLD.run_id;
    END;
    CREATE INDEX runs_status_created ON runs(status, created_at);
    CREATE INDEX runs_finished ON runs(namespace, finished_at)
        WHERE status IN ('completed', 'failed', 'cancelled');
    CREATE TABLE namespace_settings (
        namespace TEXT PRIMARY KEY,
        finished_retention REAL NOT NULL
    );
    """,
    # 3: outbox dead letters: entries their target refused for good (a 4xx answer)
    """
    ALTER TABLE outbox ADD COLUMN dead_at REAL;
    CREATE INDEX outbox_dead ON outbox(pk) WHERE dead_at IS NOT NULL;
    """,
    # 4: operator sweeps: unfinished runs paged from the oldest
    """
    CREATE INDEX IF NOT EXISTS runs_unfinished_created ON runs (created_at, run_id)
        WHERE status IN ('pending', 'running', 'waiting_for_event', 'waiting_for_timer');
    """,
    # 5: activity attempts started (JSON {seq: attempt}) and recoveries after lost workers
    """
    ALTER TABLE runs ADD COLUMN activity_attempts TEXT;
    ALTER TABLE runs ADD COLUMN recoveries INTEGER NOT NULL DEFAULT 0;
    """,
    # 6: tenancy: the build a run started on, its upgrade policy, events deduplicated per
    # namespace (SQLite cannot drop a table's UNIQUE constraint: the table is rebuilt)
    """
    ALTER TABLE runs ADD COLUMN build_id TEXT;
    ALTER TABLE runs ADD COLUMN upgrade TEXT NOT NULL DEFAULT 'pinned';
    CREATE TABLE events_per_namespace (
        pk INTEGER PRIMARY KEY AUTOINCREMENT,
        namespace TEXT NOT NULL,
        source TEXT NOT NULL,
        id TEXT NOT NULL,
        type TEXT NOT NULL,
        target_run TEXT,
        record TEXT NOT NULL,
        received_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        UNIQUE (namespace, source, id)
    );
    INSERT INTO events_per_namespace (pk, namespace, source, id, type, target_run, record,
        received_at, expires_at)
        SELECT pk, namespace, source, id, type, target_run, record, received_at, expires_at
        FROM events;
    DROP TABLE events;
    ALTER TABLE events_per_namespace RENAME TO events;
    CREATE INDEX events_kept ON events(namespace, type, received_at);
    CREATE INDEX events_inbox ON events(target_run, type) WHERE target_run IS NOT NULL;
    CREATE INDEX events_expiry ON events(expires_at);
    """,
    # 7: concurrent steps (the order outcomes were delivered; several waits at once, each
    # indexed under its seq), child runs, continue-as-new (closed chapters archived). The
    # key of wait_keys takes the seq: the table is rebuilt (its triggers dropped meanwhile)
    """
    ALTER TABLE history ADD COLUMN ordinal INTEGER;
    ALTER TABLE runs ADD COLUMN waits TEXT;
    ALTER TABLE runs ADD COLUMN wait_ordinal INTEGER;
    ALTER TABLE runs ADD COLUMN parent_run_id TEXT;
    ALTER TABLE runs ADD COLUMN chapter INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX runs_parent ON runs(parent_run_id, created_at)
        WHERE parent_run_id IS NOT NULL;
    DROP TRIGGER runs_stop_waiting;
    DROP TRIGGER runs_deleted_waiting;
    CREATE TABLE wait_keys_by_seq (
        namespace TEXT NOT NULL,
        event_type TEXT NOT NULL,
        path TEXT NOT NULL,
        value TEXT NOT NULL,
        run_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        nkeys INTEGER NOT NULL,
        PRIMARY KEY (namespace, event_type, path, value, run_id, seq)
    ) WITHOUT ROWID;
    INSERT INTO wait_keys_by_seq (namespace, event_type, path, value, run_id, seq, nkeys)
        SELECT namespace, event_type, path, value, run_id, seq, nkeys FROM wait_keys;
    DROP TABLE wait_keys;
    ALTER TABLE wait_keys_by_seq RENAME TO wait_keys;
    CREATE INDEX wait_keys_run ON wait_keys(run_id);
    CREATE TRIGGER runs_stop_waiting AFTER UPDATE OF status ON runs
        WHEN OLD.status = 'waiting_for_event' AND NEW.status <> 'waiting_for_event'
    BEGIN
        DELETE FROM wait_keys WHERE run_id = OLD.run_id;
    END;
    CREATE TRIGGER runs_deleted_waiting AFTER DELETE ON runs
        WHEN OLD.status = 'waiting_for_event'
    BEGIN
        DELETE FROM wait_keys WHERE run_id = OLD.run_id;
    END;
    CREATE TABLE chapters (
        run_id TEXT NOT NULL,
        chapter INTEGER NOT NULL,
        namespace TEXT NOT NULL,
        input TEXT NOT NULL,
        closed_at REAL NOT NULL,
        steps INTEGER NOT NULL,
        PRIMARY KEY (run_id, chapter)
    );
    CREATE INDEX chapters_closed ON chapters(namespace, closed_at);
    CREATE TABLE history_chapters (
        run_id TEXT NOT NULL,
        chapter INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        value TEXT,
        error TEXT,
        recorded_at REAL NOT NULL,
        ordinal INTEGER,
        PRIMARY KEY (run_id, chapter, seq)
    ) WITHOUT ROWID;
    """,
    # 8: matching goes through wait_keys, so the index of waiting runs by type serves nothing
    """
    DROP INDEX IF EXISTS runs_waiting_type;
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to ``SCHEMA_VERSION``; refuse a database from a newer Kenning."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the database has schema version {version} but this Kenning knows up to "
                f"{SCHEMA_VERSION}: upgrade Kenning before using this database"
            )
        for index in range(version, SCHEMA_VERSION):
            for statement in _statements(MIGRATIONS[index]):
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _statements(script: str) -> list[str]:
    """The statements of a migration, whole (a trigger's body holds semicolons)."""
    out, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                out.append(pending)
            pending = ""
    if pending.strip(" \n;"):
        out.append(pending)
    return out
