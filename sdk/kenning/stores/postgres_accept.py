"""Accepting CloudEvents into PostgreSQL: insert (deduplicated), then resume waiting runs.

Concurrent ``accept_events`` calls that share a group commit are merged: all their events
go in one INSERT, the runs they may resume are read in one query (two when some events are
addressed to a run) and resumed in one statement. A lone event takes one round trip less
(insert and read in one statement). Events apply in order: a run resumed by one event no
longer waits for the next. Broadcast candidates come from the wait keys
(``postgres_match``); ``match`` is re-checked here, so only matching runs are written.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from kenning.core.events import record_to_json
from kenning.core.matching import event_matches
from kenning.core.models import (
    AcceptOutcome,
    AcceptResult,
    CloudEventRecord,
    Notification,
    NotificationKind,
    RunStatus,
    Wait,
)
from kenning.stores import postgres_sql as sql
from kenning.stores.postgres_match import find_candidates
from kenning.stores.rows import wait_from_row

Payload = tuple[str, list[CloudEventRecord]]  # (namespace, events) of one call
_WAITING = RunStatus.WAITING_FOR_EVENT.value


@dataclass(slots=True)
class _Incoming:
    slot: int
    namespace: str
    event: CloudEventRecord
    text: str
    pk: int | None = None
    resumed: list[str] = field(default_factory=list)


async def accept_batches(conn: Any, payloads: list[Payload], now: float, retention: float
                         ) -> list[tuple[list[AcceptResult], list[Notification]]]:
    """Accept the events of several calls in one transaction; one result list per call."""
    items = [_Incoming(slot, namespace, ev, record_to_json(ev))
             for slot, (namespace, events) in enumerate(payloads) for ev in events]
    if len(items) == 1:
        candidates = await _insert_one(conn, items[0], now, retention)
    else:
        candidates = await _insert_many(conn, items, now, retention)
    resumes = sorted(_match(items, candidates))  # in run id order: locks in a fixed order
    if resumes:
        columns = [list(column) for column in zip(*resumes, strict=True)]
        rows = await conn.fetch(sql.RESUME, *columns[:6], now)
        resumed = {row["run_id"] for row in rows}  # not those claimed or cancelled meanwhile
        for item in items:
            item.resumed = [run_id for run_id in item.resumed if run_id in resumed]
    out: list[tuple[list[AcceptResult], list[Notification]]] = [([], []) for _ in payloads]
    for item in items:
        results, notes = out[item.slot]
        if item.pk is None:
            results.append(AcceptResult(AcceptOutcome.DUPLICATE))
            continue
        results.append(AcceptResult(AcceptOutcome.ACCEPTED, tuple(item.resumed)))
        notes.extend(Notification(NotificationKind.RUNNABLE, run_id) for run_id in item.resumed)
    return out


async def _insert_one(conn: Any, item: _Incoming, now: float, retention: float) -> list[Any]:
    ev = item.event
    query = sql.ACCEPT_BROADCAST if ev.target_run is None else sql.ACCEPT_ADDRESSED
    rows = await conn.fetch(query, item.namespace, ev.source, ev.id, ev.type, ev.target_run,
                            item.text, now, now + retention)
    if not rows:
        return []
    item.pk = int(rows[0]["event_pk"])
    if ev.target_run is not None:
        return [row for row in rows if row["run_id"] is not None]
    paths = [row["path"] for row in rows if row["path"] is not None]
    return await find_candidates(conn, [(item.namespace, ev)], {(item.namespace, ev.type): paths})


async def _insert_many(conn: Any, items: list[_Incoming], now: float, retention: float
                       ) -> list[Any]:
    rows = await conn.fetch(
        sql.INSERT_EVENTS, now, now + retention, [i.namespace for i in items],
        [i.event.source for i in items], [i.event.id for i in items],
        [i.event.type for i in items], [i.event.target_run for i in items],
        [i.text for i in items])
    inserted = {(row["namespace"], row["source"], row["id"]): int(row["pk"]) for row in rows}
    for item in items:  # the first of several equal (namespace, source, id) is inserted
        item.pk = inserted.pop((item.namespace, item.event.source, item.event.id), None)
    new = [item for item in items if item.pk is not None]
    addressed = sorted({i.event.target_run for i in new if i.event.target_run is not None})
    broadcast = [i for i in new if i.event.target_run is None]
    candidates: list[Any] = []
    if addressed:
        candidates += await conn.fetch(sql.LOCK_RUNS, addressed)
    candidates += await find_candidates(conn, [(i.namespace, i.event) for i in broadcast])
    return candidates


_Resume = tuple[str, int, int, str, str, str | None]


def _match(items: list[_Incoming], candidates: list[Any]) -> list[_Resume]:
    """Decide which runs each new event resumes: (run, event pk, seq, type, record, the
    wait's match text as read)."""
    by_id: dict[str, Any] = {}
    by_kind: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for row in sorted(candidates, key=lambda r: r["run_id"]):
        if row["run_id"] in by_id or row["status"] != _WAITING:
            continue
        by_id[row["run_id"]] = row
        by_kind[(row["namespace"], row["wait_type"])].append(row)
    waits: dict[str, Wait | None] = {}
    taken: set[str] = set()
    resumes: list[_Resume] = []
    for item in items:
        if item.pk is None:
            continue
        ev = item.event
        if ev.target_run is not None:
            row = by_id.get(ev.target_run)
            pool = [row] if row is not None else []
        else:
            pool = by_kind.get((item.namespace, ev.type), [])
        for row in pool:
            run_id = row["run_id"]
            if (run_id in taken or row["namespace"] != item.namespace
                    or row["wait_type"] != ev.type):
                continue
            if run_id not in waits:
                waits[run_id] = wait_from_row(row)
            wait = waits[run_id]
            if wait is None or not event_matches(ev, wait.match):
                continue
            taken.add(run_id)
            item.resumed.append(run_id)
            resumes.append((run_id, item.pk, wait.seq, ev.type, item.text, row["wait_match"]))
    return resumes
