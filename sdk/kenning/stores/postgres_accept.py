"""Accepting CloudEvents into PostgreSQL: insert (deduplicated), then resume waiting runs.

Concurrent ``accept_events`` calls that share a group commit are merged: all their events
go in one INSERT, the runs they may resume are read in one query (two when some events are
addressed to a run) and resumed in one statement. A lone event takes one round trip less
(insert and read in one statement). Events apply in order: a run resumed by one event no
longer waits for the next. Broadcast candidates come from the wait keys
(``postgres_match``); ``match`` is re-checked here, so only matching runs are written. A
run waiting on several waits is resumed by the first event (in order) that one of them
takes, at the lowest such wait's ``seq``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from kenning.core.events import record_to_json
from kenning.core.models import (
    AcceptOutcome,
    AcceptResult,
    CloudEventRecord,
    Notification,
    NotificationKind,
    RunStatus,
    Wait,
    WaitKind,
)
from kenning.stores import postgres_sql as sql
from kenning.stores.postgres_match import find_candidates
from kenning.stores.rows import wait_taking, waits_from_row

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
        rows = await conn.fetch(sql.RESUME, *columns, now)
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


# (run, event pk, seq, step name, record, the epoch read, the ordinal)
_Resume = tuple[str, int, int, str, str, int, int | None]


def _event_waits(row: Any) -> list[Wait]:
    return [w for w in waits_from_row(row) if w.kind is WaitKind.EVENT]


def _match(items: list[_Incoming], candidates: list[Any]) -> list[_Resume]:
    """Decide which runs each new event resumes, and at which of their waits (the lowest
    seq that takes it)."""
    by_id: dict[str, tuple[Any, list[Wait]]] = {}
    by_kind: dict[tuple[str, str], list[str]] = defaultdict(list)
    for row in sorted(candidates, key=lambda r: r["run_id"]):
        if row["run_id"] in by_id or row["status"] != _WAITING:
            continue
        waits = _event_waits(row)
        by_id[row["run_id"]] = (row, waits)
        for event_type in dict.fromkeys(t for w in waits for t in w.event_types):
            by_kind[(row["namespace"], event_type)].append(row["run_id"])
    taken: set[str] = set()
    resumes: list[_Resume] = []
    for item in items:
        if item.pk is None:
            continue
        ev = item.event
        if ev.target_run is not None:
            pool = [ev.target_run] if ev.target_run in by_id else []
        else:
            pool = by_kind.get((item.namespace, ev.type), [])
        for run_id in pool:
            row, waits = by_id[run_id]
            if run_id in taken or row["namespace"] != item.namespace:
                continue
            wait = wait_taking(waits, ev)
            if wait is None:
                continue
            taken.add(run_id)
            item.resumed.append(run_id)
            resumes.append((run_id, item.pk, wait.seq, wait.step_name, item.text,
                            int(row["epoch"]), row["wait_ordinal"]))
    return resumes
