"""Turning database rows into the typed models of ``kenning.core.models``."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from kenning.core import codec
from kenning.core.errors import LeaseLost
from kenning.core.events import record_from_json
from kenning.core.matching import event_matches, wait_keys
from kenning.core.models import (
    CHILD_FINISHED_TYPE,
    TARGET_RUN_EXTENSION,
    Chapter,
    CloudEventRecord,
    Lease,
    NewRun,
    Notification,
    NotificationKind,
    OutboxEntry,
    Run,
    RunStatus,
    Step,
    StepKind,
    Wait,
    WaitKind,
)

FINISHED_STATUSES = ("completed", "failed", "cancelled")
DEFAULT_FINISHED_RETENTION = 30 * 86_400.0  # finished runs are purged after 30 days
WAITING_STATUSES = ("waiting_for_event", "waiting_for_timer")


def wait_from_row(row: Mapping[str, Any]) -> Wait | None:
    """The first ``Wait`` (by seq) stored in the wait columns of a ``runs`` row, if any."""
    waits = waits_from_row(row)
    return waits[0] if waits else None


def waits_from_row(row: Mapping[str, Any]) -> tuple[Wait, ...]:
    """Every wait of a ``runs`` row, by seq: the ``waits`` JSON when the run waits on more
    than the wait columns hold, else the one wait of the columns (or none)."""
    text = row["waits"]
    if text:
        return tuple(_wait_from_dict(item) for item in json.loads(text))
    if row["wait_kind"] is None:
        return ()
    return (Wait(
        seq=row["wait_seq"],
        kind=WaitKind(row["wait_kind"]),
        wake_at=row["wake_at"],
        event_type=row["wait_type"],
        match=json.loads(row["wait_match"]) if row["wait_match"] else None,
        lookback=row["wait_lookback"],
        started_at=row["wait_started"],
        attempt=row["wait_attempt"] or 0,
        last_error=row["wait_error"],
    ),)


def _wait_to_dict(wait: Wait) -> dict[str, Any]:
    item: dict[str, Any] = {"seq": wait.seq, "kind": wait.kind.value}
    for name, value in (("wake_at", wait.wake_at), ("event_type", wait.event_type),
                        ("match", wait.match or None), ("lookback", wait.lookback),
                        ("started_at", wait.started_at), ("last_error", wait.last_error)):
        if value is not None:
            item[name] = value
    if wait.attempt:
        item["attempt"] = wait.attempt
    if wait.other_types:
        item["other_types"] = list(wait.other_types)
    return item


def _wait_from_dict(item: Mapping[str, Any]) -> Wait:
    return Wait(seq=int(item["seq"]), kind=WaitKind(item["kind"]), wake_at=item.get("wake_at"),
                event_type=item.get("event_type"), match=item.get("match"),
                lookback=item.get("lookback"), started_at=item.get("started_at"),
                attempt=int(item.get("attempt", 0)), last_error=item.get("last_error"),
                other_types=tuple(item.get("other_types", ())))


def run_from_row(row: Mapping[str, Any]) -> Run:
    """A ``Run`` from a row of the ``runs`` table."""
    waits = waits_from_row(row)
    return Run(
        run_id=row["run_id"],
        namespace=row["namespace"],
        workflow=row["workflow"],
        input=row["input"],
        status=RunStatus(row["status"]),
        created_at=row["created_at"],
        epoch=row["epoch"],
        result=row["result"],
        error=row["error"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        updated_at=row["updated_at"],
        lease_owner=row["lease_owner"],
        lease_expires=row["lease_expires"],
        wait=waits[0] if waits else None,
        pool=row["pool"],
        labels=json.loads(row["labels"]) if row["labels"] else {},
        activity_attempts=attempts_from_text(row["activity_attempts"]),
        recoveries=row["recoveries"] or 0,
        build_id=row["build_id"],
        upgrade=row["upgrade"],
        waits=waits,
        wait_ordinal=row["wait_ordinal"] if waits else None,
        parent_run_id=row["parent_run_id"],
        chapter=row["chapter"] or 0,
    )


def attempts_from_text(text: str | None) -> dict[int, int]:
    """The ``activity_attempts`` column: JSON ``{"seq": attempt}``."""
    return {int(seq): int(n) for seq, n in json.loads(text).items()} if text else {}


def attempts_to_text(attempts: Mapping[int, int]) -> str | None:
    """Inverse of ``attempts_from_text`` (``None`` for no attempts)."""
    return json.dumps({str(seq): n for seq, n in sorted(attempts.items())}) if attempts else None


def step_from_row(row: Mapping[str, Any]) -> Step:
    """A ``Step`` from a row of the ``history`` table."""
    return Step(
        seq=row["seq"],
        kind=StepKind(row["kind"]),
        name=row["name"],
        value=row["value"],
        recorded_at=row["recorded_at"],
        error=row["error"],
        ordinal=row["ordinal"],
    )


def chapter_from_row(row: Mapping[str, Any]) -> Chapter:
    """A ``Chapter`` from a row of the ``chapters`` table."""
    return Chapter(run_id=row["run_id"], chapter=row["chapter"], input=row["input"],
                   closed_at=row["closed_at"], steps=row["steps"])


def outbox_from_row(row: Mapping[str, Any]) -> OutboxEntry:
    """An ``OutboxEntry`` from a row of the ``outbox`` table."""
    return OutboxEntry(
        pk=row["pk"],
        run_id=row["run_id"],
        namespace=row["namespace"],
        event=record_from_json(row["record"]),
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
        dead_at=row["dead_at"],
    )


def wait_columns(waits: Sequence[Wait], ordinal: int | None = None) -> dict[str, Any]:
    """Column values that store ``waits`` on a run row (``()`` clears them): the first wait
    by seq in the ``wait_*`` columns, ``wake_at`` the earliest of all, the ``waits`` JSON
    only when the columns cannot hold them all (several waits, or several event types),
    and the ordinal the next delivered step takes."""
    if not waits:
        return {
            "wait_seq": None, "wait_kind": None, "wake_at": None, "wait_type": None,
            "wait_match": None, "wait_lookback": None, "wait_started": None,
            "wait_attempt": 0, "wait_error": None, "waits": None, "wait_ordinal": None,
        }
    ordered = sorted(waits, key=lambda w: w.seq)
    first = ordered[0]
    wakes = [w.wake_at for w in ordered if w.wake_at is not None]
    several = len(ordered) > 1 or bool(first.other_types)
    return {
        "wait_seq": first.seq,
        "wait_kind": first.kind.value,
        "wake_at": min(wakes) if wakes else None,
        "wait_type": first.event_type,
        "wait_match": json.dumps(first.match) if first.match else None,
        "wait_lookback": first.lookback,
        "wait_started": first.started_at,
        "wait_attempt": first.attempt,
        "wait_error": first.last_error,
        "waits": json.dumps([_wait_to_dict(w) for w in ordered]) if several else None,
        "wait_ordinal": ordinal,
    }


def wait_taking(waits: Sequence[Wait], event: CloudEventRecord) -> Wait | None:
    """The first event wait of ``waits`` (in their order) that takes ``event``: one of its
    types, and its ``match`` holds."""
    return next((w for w in waits if w.kind is WaitKind.EVENT and event.type in w.event_types
                 and event_matches(event, w.match)), None)


WaitKeyRow = tuple[str, str, str, int, int]  # (event type, path, value, seq, keys of the wait)


def wait_key_rows(waits: Sequence[Wait]) -> list[WaitKeyRow]:
    """The ``wait_keys`` rows of the event waits of ``waits`` (without namespace and run):
    one per ``match`` key (the empty path for no match) for each of a wait's types."""
    rows: list[WaitKeyRow] = []
    for wait in waits:
        if wait.kind is not WaitKind.EVENT:
            continue
        keys = wait_keys(wait.match)
        for event_type in dict.fromkeys(wait.event_types):
            rows += [(event_type, path, value, wait.seq, len(keys)) for path, value in keys]
    return rows


def retention_cutoff(settings: Mapping[str, float], namespace: str, default: float,
                     before: float | None, now: float) -> float | None:
    """The time before which the namespace's finished runs are purged: ``before`` when
    given, else ``now`` less its retention (``settings``, or ``default``); ``None`` when it
    keeps them forever (a retention of 0)."""
    if before is not None:
        return before
    keep = float(settings.get(namespace, default))
    return None if keep <= 0 else now - keep


def child_of(lease: Lease, new: NewRun) -> NewRun:
    """A child run to create under ``lease``: its parent is the leased run by default."""
    if new.parent_run_id is not None:
        return new
    return replace(new, parent_run_id=lease.run_id)


CHILD_EVENT_EXPIRY = math.inf
"""A child's finished event is kept until its parent is purged (a parent may wait for it
at any time), not for the event retention."""


def child_finished_event(*, child: str, namespace: str, chapter: int, parent: str,
                         status: str, result: str | None, error: str | None,
                         now: float) -> CloudEventRecord:
    """The ``CHILD_FINISHED_TYPE`` event a finished child run addresses to its parent."""
    data = {"run_id": child, "status": status, "result": codec.loads_or_text(result),
            "error": error}
    return CloudEventRecord(
        id=f"{child}/finished/{chapter}", source=f"/kenning/{namespace}/runs/{child}",
        type=CHILD_FINISHED_TYPE, subject=child,
        time=datetime.fromtimestamp(now, UTC).isoformat().replace("+00:00", "Z"),
        datacontenttype="application/json", data=json.dumps(data),
        extensions={TARGET_RUN_EXTENSION: parent})


def lease_lost(lease: Lease, holder: tuple[int, str | None, str] | None) -> LeaseLost:
    """The ``LeaseLost`` for a write under ``lease`` that the store refused; ``holder`` is
    the run's (epoch, lease owner, status) as the store has it now, ``None`` if it is gone."""
    if holder is None:
        return LeaseLost(f"run {lease.run_id}: lease of {lease.owner} (epoch {lease.epoch}) "
                         f"was lost: the run no longer exists", run_id=lease.run_id)
    epoch, owner, status = holder
    if status == "running" and epoch != lease.epoch:
        now = f"held by {owner} at epoch {epoch}"
    elif status == "running":
        now = f"still at epoch {epoch}, held by {owner}"
    else:
        now = f"{status} at epoch {epoch}"
    return LeaseLost(f"run {lease.run_id}: lease of {lease.owner} (epoch {lease.epoch}) was "
                     f"lost: the run is now {now}", run_id=lease.run_id, epoch=int(epoch),
                     owner=owner, status=status)


MOST_RUN_NOTES = 100  # a larger batch of new runs is announced by one note without an id


def runnable_notes(run_ids: list[str]) -> list[Notification]:
    """The notes announcing new runs: one per run, or one "anything may be runnable" note
    for a large batch (so that a million starts do not send a million notifications)."""
    if len(run_ids) > MOST_RUN_NOTES:
        return [Notification(NotificationKind.RUNNABLE, None)]
    return [Notification(NotificationKind.RUNNABLE, run_id) for run_id in run_ids]


def first_created(batch: list[NewRun], found: dict[str, tuple[bool, str]]
                  ) -> list[tuple[bool, str]]:
    """Per new run, (created, workflow of its id); a repeated id counts as created once."""
    seen: set[str] = set()
    out = []
    for new in batch:
        created, workflow = found[new.run_id]
        out.append((created and new.run_id not in seen, workflow))
        seen.add(new.run_id)
    return out
