"""The PostgreSQL schema, versioned in the ``kenning_schema`` table.

Row shapes match the SQLite schema column for column (times are ``double precision`` unix
seconds, JSON is ``text``), so the converters of ``kenning.stores.rows`` serve both.
"""

from __future__ import annotations

import logging
from typing import Any

from kenning.core.errors import SchemaTooNew

log = logging.getLogger(__name__)

# Taken (transaction-scoped) by whoever migrates, so that processes starting together
# apply each migration once. Two int4 keys: a class ('KENN') and an object id.
MIGRATION_LOCK = (0x4B454E4E, 1)

MIGRATIONS: list[str] = [
    # 1: runs, history, events, consumptions, outbox
    """
    CREATE TABLE runs (
        run_id text PRIMARY KEY,
        namespace text NOT NULL,
        workflow text NOT NULL,
        input text NOT NULL,
        status text NOT NULL,
        result text,
        error text,
        created_at double precision NOT NULL,
        started_at double precision,
        finished_at double precision,
        updated_at double precision,
        lease_owner text,
        lease_expires double precision,
        epoch bigint NOT NULL DEFAULT 0,
        wait_seq integer,
        wait_kind text,
        wake_at double precision,
        wait_type text,
        wait_match text,
        wait_lookback double precision,
        wait_started double precision,
        wait_attempt integer NOT NULL DEFAULT 0,
        wait_error text,
        pool text,
        labels text NOT NULL DEFAULT '{}'
    );
    CREATE INDEX runs_pending ON runs (created_at) WHERE status = 'pending';
    CREATE INDEX runs_leased ON runs (lease_expires) WHERE status = 'running';
    CREATE INDEX runs_due ON runs (wake_at)
        WHERE status IN ('waiting_for_event', 'waiting_for_timer') AND wake_at IS NOT NULL;
    CREATE INDEX runs_waiting_type ON runs (namespace, wait_type)
        WHERE status = 'waiting_for_event';
    CREATE INDEX runs_created ON runs (created_at);
    CREATE TABLE history (
        run_id text NOT NULL,
        seq integer NOT NULL,
        kind text NOT NULL,
        name text NOT NULL,
        value text,
        error text,
        recorded_at double precision NOT NULL,
        PRIMARY KEY (run_id, seq)
    );
    CREATE TABLE events (
        pk bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        namespace text NOT NULL,
        source text NOT NULL,
        id text NOT NULL,
        type text NOT NULL,
        target_run text,
        record text NOT NULL,
        received_at double precision NOT NULL,
        expires_at double precision NOT NULL,
        UNIQUE (source, id)
    );
    CREATE INDEX events_kept ON events (namespace, type, received_at)
        WHERE target_run IS NULL;
    CREATE INDEX events_inbox ON events (target_run, type) WHERE target_run IS NOT NULL;
    CREATE INDEX events_expiry ON events (expires_at);
    CREATE TABLE consumptions (
        run_id text NOT NULL,
        event_pk bigint NOT NULL,
        PRIMARY KEY (run_id, event_pk)
    );
    CREATE INDEX consumptions_event ON consumptions (event_pk);
    CREATE TABLE outbox (
        pk bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_id text NOT NULL,
        namespace text NOT NULL,
        record text NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        next_attempt_at double precision NOT NULL,
        last_error text,
        created_at double precision NOT NULL
    );
    CREATE INDEX outbox_due ON outbox (next_attempt_at);
    """,
    # 2: the match keys of waiting runs, indexed; claim indexes; retention of finished runs
    """
    CREATE TABLE wait_keys (
        namespace text NOT NULL,
        event_type text NOT NULL,
        path text NOT NULL,
        value text NOT NULL,
        run_id text NOT NULL,
        seq integer NOT NULL,
        nkeys smallint NOT NULL,
        PRIMARY KEY (namespace, event_type, path, value, run_id)
    );
    CREATE INDEX wait_keys_run ON wait_keys (run_id);
    CREATE TABLE wait_paths (
        namespace text NOT NULL,
        event_type text NOT NULL,
        path text NOT NULL,
        PRIMARY KEY (namespace, event_type, path)
    );
    CREATE FUNCTION kenning_drop_wait_keys() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        DELETE FROM wait_keys WHERE run_id = OLD.run_id;
        RETURN NULL;
    END $$;
    CREATE TRIGGER runs_stop_waiting AFTER UPDATE OF status ON runs FOR EACH ROW
        WHEN (OLD.status = 'waiting_for_event' AND NEW.status <> 'waiting_for_event')
        EXECUTE FUNCTION kenning_drop_wait_keys();
    CREATE TRIGGER runs_deleted_waiting AFTER DELETE ON runs FOR EACH ROW
        WHEN (OLD.status = 'waiting_for_event') EXECUTE FUNCTION kenning_drop_wait_keys();
    CREATE INDEX runs_status_created ON runs (status, created_at);
    CREATE INDEX runs_finished ON runs (namespace, finished_at)
        WHERE status IN ('completed', 'failed', 'cancelled');
    CREATE TABLE namespace_settings (
        namespace text PRIMARY KEY,
        finished_retention double precision NOT NULL
    );
    """,
    # 3: outbox dead letters: entries their target refused for good (a 4xx answer)
    """
    ALTER TABLE outbox ADD COLUMN IF NOT EXISTS dead_at double precision;
    CREATE INDEX IF NOT EXISTS outbox_dead ON outbox (pk) WHERE dead_at IS NOT NULL;
    """,
    # 4: operator sweeps: unfinished runs paged from the oldest
    """
    CREATE INDEX IF NOT EXISTS runs_unfinished_created ON runs (created_at, run_id)
        WHERE status IN ('pending', 'running', 'waiting_for_event', 'waiting_for_timer');
    """,
    # 5: activity attempts started (JSON {seq: attempt}) and recoveries after lost workers
    """
    ALTER TABLE runs ADD COLUMN activity_attempts text;
    ALTER TABLE runs ADD COLUMN recoveries integer NOT NULL DEFAULT 0;
    """,
    # 6: tenancy: the build a run started on, its upgrade policy, events deduplicated per
    # namespace
    """
    ALTER TABLE runs ADD COLUMN build_id text;
    ALTER TABLE runs ADD COLUMN upgrade text NOT NULL DEFAULT 'pinned';
    ALTER TABLE events DROP CONSTRAINT events_source_id_key;
    ALTER TABLE events ADD CONSTRAINT events_namespace_source_id_key
        UNIQUE (namespace, source, id);
    """,
    # 7: concurrent steps (the order outcomes were delivered; several waits at once, each
    # indexed under its seq), child runs, continue-as-new (closed chapters archived)
    """
    ALTER TABLE history ADD COLUMN ordinal integer;
    ALTER TABLE runs ADD COLUMN waits text, ADD COLUMN wait_ordinal integer,
        ADD COLUMN parent_run_id text, ADD COLUMN chapter integer NOT NULL DEFAULT 0;
    CREATE INDEX runs_parent ON runs (parent_run_id, created_at)
        WHERE parent_run_id IS NOT NULL;
    ALTER TABLE wait_keys DROP CONSTRAINT wait_keys_pkey,
        ADD PRIMARY KEY (namespace, event_type, path, value, run_id, seq);
    CREATE TABLE chapters (
        run_id text NOT NULL,
        chapter integer NOT NULL,
        namespace text NOT NULL,
        input text NOT NULL,
        closed_at double precision NOT NULL,
        steps integer NOT NULL,
        PRIMARY KEY (run_id, chapter)
    );
    CREATE INDEX chapters_closed ON chapters (namespace, closed_at);
    CREATE TABLE history_chapters (
        run_id text NOT NULL,
        chapter integer NOT NULL,
        seq integer NOT NULL,
        kind text NOT NULL,
        name text NOT NULL,
        value text,
        error text,
        recorded_at double precision NOT NULL,
        ordinal integer,
        PRIMARY KEY (run_id, chapter, seq)
    );
    """,
    # 8: matching goes through wait_keys, so the index of waiting runs by type serves
    # nothing; the operator's grouped counts of unfinished runs read one covering index
    # (by status first: the runnable statuses are ranges of it), never the table
    """
    DROP INDEX IF EXISTS runs_waiting_type;
    CREATE INDEX runs_unfinished_counts
        ON runs (status, namespace, pool, workflow, build_id, upgrade) INCLUDE (wake_at)
        WHERE status IN ('pending', 'running', 'waiting_for_event', 'waiting_for_timer');
    """,
]

SCHEMA_VERSION = len(MIGRATIONS)

_VERSION_TABLE = """
    CREATE TABLE IF NOT EXISTS kenning_schema (
        singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        version integer NOT NULL
    )
"""


async def migrate(conn: Any) -> int:
    """Bring the schema to ``SCHEMA_VERSION`` on an asyncpg connection; return the version
    found. Raises ``SchemaTooNew`` for a database migrated by a newer Kenning."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", *MIGRATION_LOCK)
        await conn.execute(_VERSION_TABLE)
        found = await conn.fetchval("SELECT version FROM kenning_schema")
        version = int(found or 0)
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the database has schema version {version} but this Kenning knows up to "
                f"{SCHEMA_VERSION}: upgrade Kenning before using this database"
            )
        for index in range(version, SCHEMA_VERSION):
            log.info("applying PostgreSQL schema migration %d", index + 1)
            await conn.execute(MIGRATIONS[index])
        if version < SCHEMA_VERSION:
            await conn.execute(
                "INSERT INTO kenning_schema (singleton, version) VALUES (true, $1)"
                " ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version",
                SCHEMA_VERSION,
            )
    return version
