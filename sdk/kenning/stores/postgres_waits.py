"""Waits and events on PostgreSQL: a run begins its waits (consuming an event already there,
or suspending on its waits, indexed by match key), and accepted events resume the runs that
wait for them (``postgres_accept``)."""

from __future__ import annotations

from collections.abc import Sequence

from kenning.core.events import record_from_json, record_to_json
from kenning.core.matching import event_matches
from kenning.core.models import (
    AcceptResult,
    CloudEventRecord,
    Lease,
    Notification,
    NotificationKind,
    Step,
    StepKind,
    Wait,
    WaitKind,
    earliest_wake,
)
from kenning.core.store import EventWaitResult
from kenning.core.validation import validate_events
from kenning.stores import postgres_match as match_sql
from kenning.stores import postgres_sql as sql
from kenning.stores.postgres_accept import Payload, accept_batches
from kenning.stores.postgres_base import Conn, Notes, PostgresBase


class PostgresWaits(PostgresBase):
    """The wait and event methods of ``PostgresStore``."""

    async def begin_waits(self, lease: Lease, waits: Sequence[Wait], steps: Sequence[Step] = (),
                          *, next_ordinal: int, suspend: bool = True) -> EventWaitResult:
        """Consume an event one of the event waits takes, or suspend the run on all waits
        (see ``Store.begin_waits``)."""
        return await self._begin_waits(lease, waits, steps, next_ordinal, suspend)

    async def _begin_waits(self, lease: Lease, waits: Sequence[Wait], steps: Sequence[Step],
                           ordinal: int, suspend: bool) -> EventWaitResult:
        """The run row is locked by the fence before events are searched, and, when the
        run may suspend, the advisory lock of each event type waited for is held
        exclusively, so no concurrent ``accept_events`` can commit a matching event that
        neither side sees. A look without suspending needs no lock: an event it misses came
        after the waits began, so the wait that suspends later finds it."""
        ordered = sorted(waits, key=lambda w: w.seq)
        if suspend and not ordered:
            raise ValueError("begin_waits: nothing to suspend on (no waits)")
        events = [w for w in ordered if w.kind is WaitKind.EVENT]
        if not events:
            return await self._suspend_on_timers(lease, ordered, steps, ordinal, suspend)
        wake_at = earliest_wake(ordered)

        async def op(conn: Conn, notes: Notes) -> EventWaitResult:
            namespace, now = await self._fenced(conn, sql.FENCE_ONLY, lease, steps)
            for wait in events:
                found = await self._find_event(conn, namespace, lease.run_id, wait)
                if found is not None:
                    pk, record = found
                    step = Step(wait.seq, StepKind.EVENT, wait.step_name, record_to_json(record),
                                now, ordinal=ordinal)
                    await conn.execute(sql.DELIVER, lease.run_id, pk, wait.seq, step.name,
                                       step.value, now, ordinal)
                    return EventWaitResult(step)
            if not suspend:
                return EventWaitResult(None)
            await conn.execute(match_sql.WAIT_FOR_EVENT, lease.run_id,
                               *sql.wait_params(ordered, ordinal),
                               *match_sql.wait_key_params(events))
            if wake_at is not None:
                notes.append(Notification(NotificationKind.TIMER, lease.run_id, wake_at))
            else:
                notes.append(Notification(NotificationKind.WAITING, lease.run_id))
            return EventWaitResult(None)
        keys = sorted({sql.event_lock_key(t) for w in events for t in w.event_types}
                      if suspend else ())
        return await self._write(op, exclusive=keys)

    async def _suspend_on_timers(self, lease: Lease, waits: list[Wait], steps: Sequence[Step],
                                 ordinal: int, suspend: bool) -> EventWaitResult:
        """Suspend on timers and retry delays only (one statement), or just record steps."""
        if not suspend:
            async def record(conn: Conn, notes: Notes) -> EventWaitResult:
                await self._fenced(conn, sql.FENCE_ONLY, lease, steps)
                return EventWaitResult(None)
            return await self._write(record)
        params = sql.wait_params(waits, ordinal)
        wake_at = earliest_wake(waits)

        async def op(conn: Conn, notes: Notes) -> EventWaitResult:
            await self._fenced(conn, sql.SUSPEND, lease, steps, *params)
            notes.append(Notification(NotificationKind.TIMER, lease.run_id, wake_at))
            return EventWaitResult(None)
        return await self._write(op)

    async def _find_event(self, conn: Conn, namespace: str, run_id: str,
                          wait: Wait) -> tuple[int, CloudEventRecord] | None:
        since = float((wait.started_at or self.clock()) - (wait.lookback or 0.0))
        async for row in conn.cursor(sql.FIND_EVENTS, namespace, list(wait.event_types),
                                     run_id, since, prefetch=50):
            record = record_from_json(row["record"])
            if record.type in wait.event_types and event_matches(record, wait.match):
                return int(row["pk"]), record
        return None

    async def next_wake_at(self) -> float | None:
        """The earliest due time of a suspended run."""
        row = await self._read(lambda conn: self._sample_clock(conn, sql.NEXT_WAKE_TIMED))
        return None if row[0] is None else float(row[0])

    # -- events ---------------------------------------------------------------------------
    async def accept_events(self, namespace: str,
                            events: Sequence[CloudEventRecord]) -> list[AcceptResult]:
        """Commit events (deduplicated on source and id) and resume the runs waiting for
        them; returns after the commit. Concurrent calls share one INSERT."""
        payload: Payload = (namespace, list(events))
        if not payload[1]:
            return []
        validate_events(namespace, payload[1])
        keys = sorted({sql.event_lock_key(ev.type) for ev in payload[1] if ev.target_run is None})

        async def op(conn: Conn, notes: Notes) -> list[AcceptResult]:
            [(results, accepted)] = await self._accept_batches(conn, [payload])
            notes.extend(accepted)
            return results
        return await self._write(op, shared=keys, merge=self._accept_batches, payload=payload)

    async def _accept_batches(self, conn: Conn, payloads: list[Payload]
                              ) -> list[tuple[list[AcceptResult], list[Notification]]]:
        return await accept_batches(conn, payloads, self._now(), self.event_retention)

    async def count_events(self) -> int:
        """How many events are kept."""
        return int(await self._read(lambda conn: conn.fetchval(sql.COUNT_EVENTS)))

    async def purge_expired(self) -> int:
        """Drop events past their retention, with their consumption marks, and the paths
        of wait keys that no wait uses any more (each would cost every event of its type a
        probe)."""
        async def op(conn: Conn, notes: Notes) -> int:
            return int(await conn.fetchval(sql.PURGE, self._now()))
        purged = await self._write(op)
        await self._prune_wait_paths()
        return purged

    async def _prune_wait_paths(self) -> None:
        stale = await self._read(lambda conn: conn.fetch(match_sql.STALE_PATHS,
                                                         match_sql.MOST_STALE_PATHS))
        if not stale:
            return
        columns = [[row[i] for row in stale] for i in range(3)]

        async def op(conn: Conn, notes: Notes) -> None:
            await conn.execute(match_sql.PRUNE_PATHS, *columns)
        await self._write(op, shared=sorted({sql.event_lock_key(t) for t in columns[1]}))
