"""The statements of the PostgreSQL store. Fixed texts, so asyncpg prepares each once per
connection; lists travel as arrays (``= ANY($n)``, ``unnest``), never as spliced values."""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from typing import Any

from kenning.core.models import Step, Wait
from kenning.stores.claim_scope import postgres_scope
from kenning.stores.db_clock import DB_CLOCK, DB_NOW
from kenning.stores.rows import wait_columns

CLEAR_WAIT = "".join(
    f", {col} = {'0' if value == 0 else 'NULL'}" for col, value in wait_columns(()).items()
)
WAIT_COLUMNS = tuple(wait_columns(()))


def set_wait(first: int) -> str:
    """``, wait_seq = $first, ...`` for the wait columns, numbered from ``first``."""
    return "".join(f", {col} = ${first + i}" for i, col in enumerate(WAIT_COLUMNS))


def wait_params(waits: Sequence[Wait], ordinal: int | None = None) -> list[Any]:
    """The wait column values of ``waits``, for ``set_wait``."""
    values = wait_columns(waits, ordinal)
    for col in ("wake_at", "wait_lookback", "wait_started"):
        if values[col] is not None:
            values[col] = float(values[col])
    return list(values.values())


def store_time(sql: str, param: int) -> str:
    """``sql`` with parameter ``$param`` (the time) taken from the database's clock when it
    is NULL: a store without an injected clock passes NULL, so leases, claims and due
    times are judged by PostgreSQL's clock, never a worker's."""
    return re.sub(rf"\${param}(?!\d)", f"COALESCE(${param}::float8, {DB_NOW})", sql)


def step_arrays(steps: Sequence[Step]) -> tuple[list[Any], ...]:
    """The steps as the seven arrays (``$4..$10``) the fenced statements unnest."""
    return ([s.seq for s in steps], [s.kind.value for s in steps], [s.name for s in steps],
            [s.value for s in steps], [s.error for s in steps],
            [float(s.recorded_at) for s in steps], [s.ordinal for s in steps])


def event_lock_key(event_type: str) -> int:
    """The advisory lock key that orders event waits against event deliveries of a type."""
    digest = hashlib.blake2b(event_type.encode(), digest_size=8, person=b"kenning").digest()
    return int.from_bytes(digest, "big", signed=True)


# -- fenced writes ------------------------------------------------------------------------
# $1 run_id, $2 epoch, $3 now, $4..$10 the steps as arrays; op-specific from $11.
# The UPDATE is the fence: if it matches no row, the inserts insert nothing.
_STEPS = ("unnest($4::int[], $5::text[], $6::text[], $7::text[], $8::text[], $9::float8[],"
          " $10::int[]) AS s(seq, kind, name, value, error, recorded_at, ordinal)")
_HISTORY_COLUMNS = "seq, kind, name, value, error, recorded_at, ordinal"


def fenced(sets: str = "", *, outbox: bool = False, returning: str = "",
           select: str = "namespace") -> str:
    """A statement that fences the lease, updates the run and records steps; it returns
    the run's namespace (``select``), or no row when the lease was lost."""
    sql = (
        f"WITH f AS (UPDATE runs SET updated_at = $3, recoveries = 0{sets}"
        " WHERE run_id = $1 AND epoch = $2 AND status = 'running'"
        f" RETURNING run_id, namespace{returning}),"
        f" h AS (INSERT INTO history (run_id, {_HISTORY_COLUMNS})"
        f" SELECT f.run_id, s.* FROM f, {_STEPS})"
    )
    if outbox:
        sql += (
            ", o AS (INSERT INTO outbox (run_id, namespace, record, next_attempt_at, created_at)"
            " SELECT f.run_id, f.namespace, r.record, $3, $3 FROM f,"
            " unnest($11::text[]) WITH ORDINALITY AS r(record, n) ORDER BY r.n)"
        )
    return store_time(sql + f" SELECT {select} FROM f", 3)


APPEND = fenced(CLEAR_WAIT, outbox=True)
APPEND_WITH_ATTEMPTS = fenced(CLEAR_WAIT + ", activity_attempts = $12", outbox=True)
FENCE_ONLY = fenced()
# handed back on shutdown: attempts cut short by it are not counted as lost
RELEASE = fenced(", status = 'pending', lease_owner = NULL, lease_expires = NULL,"
                 " activity_attempts = NULL")
SUSPEND = fenced(", status = 'waiting_for_timer', lease_owner = NULL, lease_expires = NULL"
                 + set_wait(11))
# the end: also what a child needs to tell its parent (the parent's namespace, if it exists)
FINISH = fenced(", status = $11, result = $12, error = $13, finished_at = $3,"
                " lease_owner = NULL, lease_expires = NULL" + CLEAR_WAIT,
                returning=", parent_run_id, chapter",
                select="namespace, parent_run_id, chapter, (SELECT p.namespace FROM runs p"
                       " WHERE p.run_id = f.parent_run_id) AS parent_namespace")
# Continue as new: $11 the new input. The run's history (and the steps given, which the
# history CTE could not see) moves to chapter ``chapter`` of the archive; the run becomes
# pending in the next chapter with an empty history, its waits, attempts and lease cleared.
CONTINUE = store_time(
    "WITH o AS (SELECT run_id, namespace, input, chapter FROM runs WHERE run_id = $1"
    " AND epoch = $2 AND status = 'running' FOR UPDATE),"
    " f AS (UPDATE runs SET updated_at = $3, recoveries = 0, status = 'pending', input = $11,"
    " chapter = o.chapter + 1, lease_owner = NULL, lease_expires = NULL,"
    f" activity_attempts = NULL, result = NULL, error = NULL{CLEAR_WAIT} FROM o"
    " WHERE runs.run_id = o.run_id RETURNING runs.run_id, o.namespace, o.input AS old_input,"
    " o.chapter AS closed),"
    " m AS (DELETE FROM history WHERE run_id IN (SELECT run_id FROM f)"
    f" RETURNING {_HISTORY_COLUMNS}),"
    f" s AS (SELECT * FROM {_STEPS}),"
    f" a AS (INSERT INTO history_chapters (run_id, chapter, {_HISTORY_COLUMNS})"
    f" SELECT f.run_id, f.closed, x.* FROM f, (SELECT * FROM m UNION ALL SELECT * FROM s) x),"
    " c AS (INSERT INTO chapters (run_id, chapter, namespace, input, closed_at, steps)"
    " SELECT f.run_id, f.closed, f.namespace, f.old_input, $3,"
    " (SELECT count(*) FROM m) + (SELECT count(*) FROM s) FROM f)"
    " SELECT namespace, closed + 1 AS chapter FROM f", 3)

# -- runs ---------------------------------------------------------------------------------
CREATE_RUN = (
    "INSERT INTO runs (run_id, namespace, workflow, input, status, created_at, updated_at,"
    " pool, labels, build_id, upgrade, parent_run_id) VALUES ($1, $2, $3, $4, 'pending', $5,"
    " $5, $6, $7, $8, $9, $10)"
    " ON CONFLICT (run_id) DO NOTHING RETURNING *"
)
# Many runs: $1 now, then the columns as arrays; one row per distinct id: whether it was
# created and the workflow its id belongs to.
CREATE_RUNS = (
    "WITH n AS (SELECT DISTINCT ON (run_id) * FROM unnest($2::text[], $3::text[], $4::text[],"
    " $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[]) WITH ORDINALITY"
    " AS n(run_id, namespace, workflow, input, pool, labels, build_id, upgrade, parent, i)"
    " ORDER BY run_id, i),"
    " ins AS (INSERT INTO runs (run_id, namespace, workflow, input, status, created_at,"
    " updated_at, pool, labels, build_id, upgrade, parent_run_id) SELECT run_id, namespace,"
    " workflow, input, 'pending', $1, $1, pool, labels, build_id, upgrade, parent FROM n"
    " ORDER BY i"
    " ON CONFLICT (run_id) DO NOTHING RETURNING run_id)"
    " SELECT n.run_id, ins.run_id IS NOT NULL AS created, COALESCE(r.workflow, n.workflow)"
    " AS workflow FROM n LEFT JOIN ins ON ins.run_id = n.run_id"
    " LEFT JOIN runs r ON r.run_id = n.run_id"
)
GET_RUN = "SELECT * FROM runs WHERE run_id = $1"
RECORD_ATTEMPTS = (
    "UPDATE runs SET activity_attempts = $3"
    " WHERE run_id = $1 AND epoch = $2 AND status = 'running' RETURNING run_id"
)
LEASE_HOLDER = "SELECT epoch, lease_owner, status FROM runs WHERE run_id = $1"
HISTORY = "SELECT * FROM history WHERE run_id = $1 ORDER BY seq"
# A chapter's history: a closed one from the archive, or the current one ($1 run, $2 chapter)
CHAPTER_HISTORY = (
    f"SELECT {_HISTORY_COLUMNS} FROM history_chapters WHERE run_id = $1 AND chapter = $2"
    f" UNION ALL SELECT {', '.join('h.' + c for c in _HISTORY_COLUMNS.split(', '))}"
    " FROM history h JOIN runs r ON r.run_id = h.run_id WHERE h.run_id = $1 AND r.chapter = $2"
    " ORDER BY seq"
)
CHAPTERS = "SELECT * FROM chapters WHERE run_id = $1 ORDER BY chapter"
HISTORIES = "SELECT * FROM history WHERE run_id = ANY($1::text[]) ORDER BY run_id, seq"
_UNFINISHED = "status NOT IN ('completed', 'failed', 'cancelled')"
# Cancel run $1 (reason $2, now $3) if unfinished, with its unfinished descendants (reason
# $4); each cancelled run with the namespace of its parent (to address its finished event).
CANCEL = (
    f"WITH RECURSIVE t AS (SELECT run_id FROM runs WHERE run_id = $1 AND {_UNFINISHED}"
    " UNION SELECT r.run_id FROM runs r JOIN t ON r.parent_run_id = t.run_id),"
    " c AS (UPDATE runs SET status = 'cancelled',"
    " error = CASE WHEN run_id = $1 THEN $2 ELSE $4 END, finished_at = $3, updated_at = $3,"
    f" epoch = epoch + 1, lease_owner = NULL, lease_expires = NULL{CLEAR_WAIT}"
    f" WHERE run_id IN (SELECT run_id FROM t) AND {_UNFINISHED} RETURNING *)"
    " SELECT c.*, p.namespace AS parent_namespace FROM c"
    " LEFT JOIN runs p ON p.run_id = c.parent_run_id"
)
# $1 lease seconds, $2 worker, $3 runs, $4 now (NULL: the database's clock)
RENEW = store_time(
    "UPDATE runs SET lease_expires = $4 + $1"
    " WHERE lease_owner = $2 AND status = 'running' AND run_id = ANY($3::text[])", 4)
# $1 worker, $2 now (NULL: the database's clock)
LIVE_LEASES = store_time(
    "SELECT count(*) FROM runs WHERE status = 'running' AND lease_owner = $1"
    " AND lease_expires >= $2", 2)
# $1 due before. Counted per status first, in the order of the index runs_unfinished_counts
# (status, namespace, pool, workflow, build, upgrade; wake_at included): an index-only read
# that streams into its groups, never the table and no sort of the runs; the few
# (status, group) counts are then summed per group.
UNFINISHED_BY_BUILD = (
    "SELECT namespace, pool, workflow, build_id, upgrade, sum(n)::bigint AS unfinished,"
    " sum(CASE WHEN status IN ('pending', 'running') THEN n ELSE due END)::bigint AS runnable"
    " FROM (SELECT status, namespace, pool, workflow, build_id, upgrade, count(*) AS n,"
    " count(*) FILTER (WHERE wake_at <= $1) AS due FROM runs"
    " WHERE status IN ('pending', 'running', 'waiting_for_event', 'waiting_for_timer')"
    " GROUP BY status, namespace, pool, workflow, build_id, upgrade) AS s"
    " GROUP BY namespace, pool, workflow, build_id, upgrade"
)
NEXT_WAKE = (
    "SELECT min(wake_at) FROM runs WHERE status IN ('waiting_for_event', 'waiting_for_timer')"
    " AND wake_at IS NOT NULL"
)
# the same, with the database's time now (to keep the local estimate of its clock)
NEXT_WAKE_TIMED = NEXT_WAKE.replace("SELECT min(wake_at)", f"SELECT min(wake_at), {DB_CLOCK}",
                                   1)
assert NEXT_WAKE_TIMED != NEXT_WAKE
DB_TIME = f"SELECT {DB_CLOCK}"


@functools.lru_cache(maxsize=16)
def claim(*, workflows: bool, run_ids: bool, reclaim: bool, recovering: bool = True,
          scoped: bool = False) -> str:
    """Lease runnable runs in one statement: $1 worker, $2 lease seconds, $3 now (NULL: the
    database's clock), $4 limit, then the workflow names and the run ids as arrays when
    they filter, then the five ``claim_scope`` parameters when scoped.

    Pending, due and expired runs are taken oldest first from one index each (a single
    ``OR`` over the three would walk every run in creation order); each branch locks what
    it takes, and the oldest ``$4`` of the three win."""
    own = " OR lease_owner = $1" if reclaim else ""
    filters, sets, n = "", "", 5
    if workflows:
        filters += f" AND workflow = ANY(${n}::text[])"
        n += 1
    if run_ids:
        filters += f" AND run_id = ANY(${n}::text[])"
        n += 1
    if scoped:
        scope_filters, sets = postgres_scope(n)
        filters += scope_filters

    def branch(name: str, condition: str) -> str:
        return (f"{name} AS (SELECT run_id, created_at FROM runs WHERE {condition}{filters}"
                " ORDER BY created_at LIMIT $4 FOR UPDATE SKIP LOCKED)")
    return store_time(
        "WITH " + branch("p", "status = 'pending'")
        + ", " + branch("d", "status IN ('waiting_for_event', 'waiting_for_timer')"
                             " AND wake_at <= $3")
        + ", " + branch("l", f"status = 'running' AND (lease_expires < $3{own})")
        + ", c AS (SELECT run_id FROM (SELECT * FROM p UNION ALL SELECT * FROM d"
        " UNION ALL SELECT * FROM l) AS r ORDER BY created_at LIMIT $4)"
        " UPDATE runs SET status = 'running', lease_owner = $1, lease_expires = $3 + $2,"
        " epoch = epoch + 1, started_at = COALESCE(started_at, $3), updated_at = $3,"
        + (" recoveries = recoveries + (status = 'running')::int" if recovering
           else " recoveries = recoveries") + sets +
        " WHERE run_id IN (SELECT run_id FROM c) RETURNING *", 3
    )


@functools.lru_cache(maxsize=16)
def list_runs(*, namespace: bool, status: bool, workflow: bool, parent: bool = False) -> str:
    """Runs newest first; the present filters are numbered $1.. in this order, then limit."""
    clauses = [f"{col} = ${i}" for i, col in enumerate(
        [c for c, on in (("namespace", namespace), ("status", status), ("workflow", workflow),
                         ("parent_run_id", parent)) if on], start=1)]
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    return (f"SELECT * FROM runs{where} ORDER BY created_at DESC, run_id"
            f" LIMIT ${len(clauses) + 1}")


# -- events -------------------------------------------------------------------------------
# One event: $1 namespace, $2 source, $3 id, $4 type, $5 target run, $6 record, $7 now,
# $8 expiry; the insert and the read of the runs it may resume in one round trip.
# A run starting to wait concurrently is seen as it commits: the addressed run because its
# row is locked here (the wait locks it too), the others because a wait holds the type's
# advisory lock exclusively and accepting holds it shared. Broadcast candidates are found
# through the wait keys and read unlocked; RESUME re-checks that each still waits.
_INSERT_EVENT = (
    "WITH ins AS (INSERT INTO events (namespace, source, id, type, target_run, record,"
    " received_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    " ON CONFLICT (namespace, source, id) DO NOTHING RETURNING pk)"
    " SELECT ins.pk AS event_pk, r.* FROM ins LEFT JOIN LATERAL ({runs}) r ON true"
)
ACCEPT_ADDRESSED = _INSERT_EVENT.format(runs="SELECT * FROM runs WHERE run_id = $5 FOR UPDATE")
# A broadcast event reads the paths waited on for its type (see ``postgres_match``).
ACCEPT_BROADCAST = _INSERT_EVENT.format(
    runs="SELECT path FROM wait_paths WHERE namespace = $1 AND event_type = $4")
# Several events: insert them all ($1 now, $2 expiry, then arrays), then read candidates.
INSERT_EVENTS = (
    "INSERT INTO events (namespace, source, id, type, target_run, record, received_at,"
    " expires_at) SELECT e.ns, e.src, e.id, e.typ, e.tgt, e.rec, $1, $2 FROM unnest($3::text[],"
    " $4::text[], $5::text[], $6::text[], $7::text[], $8::text[]) WITH ORDINALITY"
    " AS e(ns, src, id, typ, tgt, rec, n) ORDER BY e.n"
    " ON CONFLICT (namespace, source, id) DO NOTHING RETURNING pk, namespace, source, id"
)
LOCK_RUNS = "SELECT * FROM runs WHERE run_id = ANY($1::text[]) ORDER BY run_id FOR UPDATE"
# Resume the runs that still wait as they were read (the same suspension: status and epoch
# unchanged): $1 runs, $2 event pks, $3 seqs, $4 step names, $5 records, $6 the epochs
# read, $7 the ordinals, $8 now. Returns those resumed.
RESUME = (
    "WITH t AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::int[], $4::text[],"
    " $5::text[], $6::bigint[], $7::int[]) AS t(r, pk, s, n, v, e, o)),"
    f" u AS (UPDATE runs SET status = 'pending', updated_at = $8{CLEAR_WAIT} FROM t"
    " WHERE runs.run_id = t.r AND runs.status = 'waiting_for_event' AND runs.epoch = t.e"
    " AND (runs.wake_at IS NULL OR runs.wake_at > $8)"  # a timed-out wait takes no late event
    " RETURNING runs.run_id, t.pk, t.s, t.n, t.v, t.o),"
    " c AS (INSERT INTO consumptions (run_id, event_pk) SELECT run_id, pk FROM u),"
    f" h AS (INSERT INTO history (run_id, {_HISTORY_COLUMNS})"
    " SELECT run_id, s, 'event', n, v, NULL, $8, o FROM u)"
    " SELECT run_id FROM u"
)
# Events a wait of run $3 may consume: of types $2, addressed to it, or kept since $4.
FIND_EVENTS = (
    "SELECT pk, record FROM events WHERE namespace = $1 AND type = ANY($2::text[])"
    " AND (target_run = $3 OR (target_run IS NULL AND received_at >= $4))"
    " AND NOT EXISTS (SELECT 1 FROM consumptions c WHERE c.run_id = $3 AND c.event_pk = events.pk)"
    " ORDER BY pk"
)
# $1 run, $2 event pk, $3 seq, $4 step name, $5 record, $6 now, $7 ordinal
DELIVER = (
    "WITH c AS (INSERT INTO consumptions (run_id, event_pk) VALUES ($1, $2)),"
    f" h AS (INSERT INTO history (run_id, {_HISTORY_COLUMNS})"
    " VALUES ($1, $3, 'event', $4, $5, NULL, $6, $7))"
    f" UPDATE runs SET updated_at = $6{CLEAR_WAIT} WHERE run_id = $1"
)
COUNT_EVENTS = "SELECT count(*) FROM events"
PURGE = (
    "WITH d AS (DELETE FROM events WHERE expires_at < $1 RETURNING pk),"
    " c AS (DELETE FROM consumptions WHERE event_pk IN (SELECT pk FROM d))"
    " SELECT count(*) FROM d"
)

# -- outbox -------------------------------------------------------------------------------
# Claim due entries: push their next attempt out by $3 s so another dispatcher skips them
# while this one publishes (a crash just makes them due again).
DUE_OUTBOX = (
    "UPDATE outbox SET next_attempt_at = $1 + $3 WHERE pk IN (SELECT pk FROM outbox"
    " WHERE next_attempt_at <= $1 AND dead_at IS NULL ORDER BY pk LIMIT $2"
    " FOR UPDATE SKIP LOCKED) RETURNING *"
)
OUTBOX_DONE = "DELETE FROM outbox WHERE pk = $1"
OUTBOX_RETRY = (
    "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3"
    " WHERE pk = $1"
)
OUTBOX_DEAD = (
    "UPDATE outbox SET attempts = attempts + 1, dead_at = $2, last_error = $3 WHERE pk = $1"
)
LIST_OUTBOX = "SELECT * FROM outbox WHERE (dead_at IS NOT NULL) = $1 ORDER BY pk LIMIT $2"
REVIVE_OUTBOX = (
    "UPDATE outbox SET dead_at = NULL, attempts = 0, next_attempt_at = $1"
    " WHERE dead_at IS NOT NULL AND ($2::bigint[] IS NULL OR pk = ANY($2))"
)
COUNT_OUTBOX = "SELECT count(*) FROM outbox WHERE (dead_at IS NOT NULL) = $1"
