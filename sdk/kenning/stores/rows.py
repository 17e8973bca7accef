"""Turning database rows into the typed models of ``kenning.core.models``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from kenning.core.errors import LeaseLost
from kenning.core.events import record_from_json
from kenning.core.models import (
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
    """The ``Wait`` stored in the wait columns of a ``runs`` row, if any."""
    wait = None
    if row["wait_kind"] is not None:
        wait = Wait(
            seq=row["wait_seq"],
            kind=WaitKind(row["wait_kind"]),
            wake_at=row["wake_at"],
            event_type=row["wait_type"],
            match=json.loads(row["wait_match"]) if row["wait_match"] else None,
            lookback=row["wait_lookback"],
            started_at=row["wait_started"],
            attempt=row["wait_attempt"] or 0,
            last_error=row["wait_error"],
        )
    return wait


def run_from_row(row: Mapping[str, Any]) -> Run:
    """A ``Run`` from a row of the ``runs`` table."""
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
        wait=wait_from_row(row),
        pool=row["pool"],
        labels=json.loads(row["labels"]) if row["labels"] else {},
        activity_attempts=attempts_from_text(row["activity_attempts"]),
        recoveries=row["recoveries"] or 0,
        build_id=row["build_id"],
        upgrade=row["upgrade"],
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
    )


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


def wait_columns(wait: Wait | None) -> dict[str, Any]:
    """Column values that store ``wait`` on a run row (all ``None`` to clear it)."""
    if wait is None:
        return {
            "wait_seq": None, "wait_kind": None, "wake_at": None, "wait_type": None,
            "wait_match": None, "wait_lookback": None, "wait_started": None,
            "wait_attempt": 0, "wait_error": None,
        }
    return {
        "wait_seq": wait.seq,
        "wait_kind": wait.kind.value,
        "wake_at": wait.wake_at,
        "wait_type": wait.event_type,
        "wait_match": json.dumps(wait.match) if wait.match else None,
        "wait_lookback": wait.lookback,
        "wait_started": wait.started_at,
        "wait_attempt": wait.attempt,
        "wait_error": wait.last_error,
    }


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
